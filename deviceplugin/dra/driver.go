package dra

import (
	"context"
	"errors"
	"fmt"
	"os"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

// Source is what the driver publishes: the node agent's current layout and
// GPU health, and a channel closed when either changes (deviceplugin.Plugin
// implements it).
type Source interface {
	Advertisement() (l *slicing.Layout, healthy slicing.Health, changed <-chan struct{})
}

// Options configure Run.
type Options struct {
	NodeName string
	Client   kubernetes.Interface
	// PluginDir holds the driver's socket (the kubelet's plugins
	// directory, e.g. /var/lib/kubelet/plugins/gpu.tessera.dev).
	PluginDir string
	// RegistrarDir is the kubelet's plugin registration directory
	// (/var/lib/kubelet/plugins_registry).
	RegistrarDir string
	// CDIDir is where the container runtime reads CDI specs.
	CDIDir string
	Env    slicing.EnvOptions
}

// driver adapts Preparer to kubeletplugin.DRAPlugin.
type driver struct {
	prep   *Preparer
	cancel context.CancelCauseFunc
}

var _ kubeletplugin.DRAPlugin = (*driver)(nil)

func (d *driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	return d.prep.Prepare(ctx, claims), nil
}

func (d *driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	return d.prep.Unprepare(ctx, claims), nil
}

// HandleError logs background errors (publishing ResourceSlices); an
// unrecoverable one (the API refuses the slices) stops the driver, so the
// pod restarts and the error is visible, rather than serving stale slices.
func (d *driver) HandleError(ctx context.Context, err error, msg string) {
	utilruntime.HandleErrorWithContext(ctx, err, msg)
	if !errors.Is(err, kubeletplugin.ErrRecoverable) {
		d.cancel(fmt.Errorf("%s: %w", msg, err))
	}
}

// WatchHealthStatus is off (HealthService(false)): an unhealthy GPU's
// devices leave the ResourceSlice instead.
func (d *driver) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}

// Run registers the DRA driver with the kubelet and publishes src's
// devices until ctx ends, republishing on every change.
func Run(ctx context.Context, src Source, o Options) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	logger := klog.FromContext(ctx)
	d := &driver{cancel: cancel, prep: &Preparer{NodeName: o.NodeName, CDIDir: o.CDIDir, Env: o.Env, Layout: func() *slicing.Layout {
		l, _, _ := src.Advertisement()
		return l
	}}}
	// The kubelet creates its registration directory, not ours.
	if err := os.MkdirAll(o.PluginDir, 0o750); err != nil {
		return fmt.Errorf("DRA plugin directory: %w", err)
	}
	helper, err := kubeletplugin.Start(ctx, d,
		kubeletplugin.DriverName(DriverName),
		kubeletplugin.KubeClient(o.Client),
		kubeletplugin.NodeName(o.NodeName),
		kubeletplugin.PluginDataDirectoryPath(o.PluginDir),
		kubeletplugin.RegistrarDirectoryPath(o.RegistrarDir),
		kubeletplugin.HealthService(false),
	)
	if err != nil {
		return fmt.Errorf("starting the DRA driver: %w", err)
	}
	defer helper.Stop()
	logger.Info("DRA driver registered", "driver", DriverName, "pluginDir", o.PluginDir, "cdiDir", o.CDIDir)
	for {
		l, healthy, changed := src.Advertisement()
		if err := helper.PublishResources(ctx, Resources(o.NodeName, l, healthy)); err != nil {
			return fmt.Errorf("publishing ResourceSlices: %w", err)
		}
		select {
		case <-ctx.Done():
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				return cause
			}
			return nil
		case <-changed:
		}
	}
}
