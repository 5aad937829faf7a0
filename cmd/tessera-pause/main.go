// Command tessera-pause is the sandbox ("pause") container of the local
// cluster's real node: it holds the pod's namespaces and waits for SIGTERM.
// Building it ourselves means the node never pulls an image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
