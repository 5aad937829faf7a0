// Command tessera-device-plugin is Tessera's kubelet device plugin.
//
// Build (cgo; libnvidia-ml.so.1 is opened at run time, so no GPU or driver
// is needed to build):
//
//	CGO_ENABLED=1 go build -o bin/tessera-device-plugin ./cmd/tessera-device-plugin
//
// Run "tessera-device-plugin help" for the modes and flags.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/deviceplugin/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx = klog.NewContext(ctx, klog.Background())
	code := app.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	klog.Flush()
	os.Exit(code)
}
