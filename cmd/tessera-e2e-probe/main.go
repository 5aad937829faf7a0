// Command tessera-e2e-probe is the end-to-end tests' workload: it prints
// what Tessera handed the container (GPU and slice environment) in a form
// the tests parse, then exits 0. With --wait it stays up until SIGTERM, to
// hold its slices while a test looks.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

func main() {
	wait := flag.Bool("wait", false, "keep running until SIGTERM after printing")
	flag.Parse()
	var lines []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TESSERA_") || strings.HasPrefix(kv, "NVIDIA_") || strings.HasPrefix(kv, "CUDA_MPS_") {
			lines = append(lines, "env "+kv)
		}
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	fmt.Printf("uid %d\n", os.Getuid())
	fmt.Println("tessera-e2e-probe ok")
	if *wait {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
	}
}
