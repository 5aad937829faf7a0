package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Run runs the plugin until ctx ends: the kubelet session (serve, register,
// re-register after a kubelet restart), the config and node-label watch,
// health, reconciliation and inventory publishing. Every loop is bound to
// ctx; none exits the process.
func (p *Plugin) Run(ctx context.Context) error {
	return p.RunWith(ctx, p.serveKubelet)
}

// RunWith runs the plugin's loops (config, health, Xid, reconciliation,
// inventory) with serve in place of the device-plugin registration with the
// kubelet: the DRA driver (deviceplugin/dra) serves the kubelet instead on
// nodes where the node agent runs in DRA mode.
func (p *Plugin) RunWith(ctx context.Context, serve func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	loops := []func(context.Context){p.runConfig, p.runHealth, p.runXid}
	if p.reconciles() {
		loops = append(loops, p.runReconcile)
	}
	if p.deps.Nodes != nil {
		loops = append(loops, p.runInventory)
	}
	for _, loop := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	err := serve(ctx)
	cancel()
	wg.Wait()
	return err
}

// errKubeletRestarted ends a session when the kubelet's socket was
// recreated or our socket was removed (the kubelet wipes the directory when
// it starts): register again at once.
var errKubeletRestarted = errors.New("kubelet restarted")

func (p *Plugin) serveKubelet(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	backoff := time.Second
	for {
		began := p.deps.Clock.Now()
		err := p.serveOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errKubeletRestarted) {
			logger.Info("Kubelet restarted, registering again")
			backoff = time.Second
			continue
		}
		if p.deps.Clock.Since(began) > time.Minute {
			backoff = time.Second
		}
		logger.Error(err, "Device plugin session ended, starting again", "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-p.deps.Clock.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// SocketPath is where the plugin serves.
func (p *Plugin) SocketPath() string { return filepath.Join(p.opts.PluginDir, p.opts.SocketName) }

func (p *Plugin) serveOnce(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	sock := p.SocketPath()
	if err := os.MkdirAll(p.opts.PluginDir, 0o750); err != nil {
		return fmt.Errorf("creating plugin directory: %w", err)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", sock, err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() {
		srv.Stop()
		<-served
		// Remove our socket unless a newer session already replaced it.
		_ = os.Remove(sock)
	}()
	ourID, err := fileID(sock)
	if err != nil {
		return fmt.Errorf("stat %s: %w", sock, err)
	}

	kubeletSock := filepath.Join(p.opts.PluginDir, p.opts.KubeletSocketName)
	tick := p.deps.Clock.NewTicker(p.opts.SocketCheckInterval)
	defer tick.Stop()
	var kubeletID sockID
	for waited := false; ; waited = true {
		if kubeletID, err = fileID(kubeletSock); err == nil {
			break
		}
		if !waited {
			logger.Info("Waiting for the kubelet socket", "path", kubeletSock)
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-served:
			return fmt.Errorf("serving: %w", err)
		case <-tick.C():
		}
	}
	if err := p.register(ctx, kubeletSock); err != nil {
		return err
	}
	p.deps.Metrics.Registrations.Inc()
	logger.Info("Registered with the kubelet", "resource", p.opts.ResourceName, "socket", sock)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-served:
			return fmt.Errorf("serving: %w", err)
		case <-tick.C():
		}
		if id, err := fileID(kubeletSock); err != nil || id != kubeletID {
			return errKubeletRestarted
		}
		if id, err := fileID(sock); err != nil || id != ourID {
			return errKubeletRestarted
		}
	}
}

func (p *Plugin) register(ctx context.Context, kubeletSock string) error {
	conn, err := grpc.NewClient("unix://"+kubeletSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connecting to the kubelet at %s: %w", kubeletSock, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     p.opts.SocketName,
		ResourceName: p.opts.ResourceName,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
	})
	if err != nil {
		return fmt.Errorf("registering %s with the kubelet: %w", p.opts.ResourceName, err)
	}
	return nil
}

// sockID identifies one incarnation of a socket file.
type sockID struct {
	ino   uint64
	ctime int64
}

func fileID(path string) (sockID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return sockID{}, err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return sockID{ino: st.Ino, ctime: st.Ctim.Nano()}, nil
	}
	return sockID{ctime: fi.ModTime().UnixNano()}, nil
}
