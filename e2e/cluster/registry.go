package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// MirroredRegistry is the public registry whose images the real node pulls
// from the cluster's own registry (CNCF Distribution, built unmodified from
// the Go module proxy): manifests that name ghcr.io/tessera-gpu/... with the
// default pull policy (Always, for :latest) pull for real, and nothing
// leaves the machine. containerd's hosts.toml for ghcr.io names the local
// registry as the server itself, not as a mirror in front of ghcr.io, so a
// missing image fails the pull instead of falling through to the internet.
const MirroredRegistry = "ghcr.io"

// startRegistry runs the registry on loopback with its storage under the
// cluster directory and points containerd's registry configuration for
// MirroredRegistry at it. containerd reads that configuration at each
// pull, so the order against containerd's start does not matter.
func (c *Cluster) startRegistry(ctx context.Context) error {
	bin := c.tool("registry")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("the registry is not built (%w): run make tools", err)
	}
	dir := filepath.Join(c.Dir, "registry")
	if err := os.MkdirAll(filepath.Join(dir, "storage"), 0o755); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "storage"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	// No OpenTelemetry export: the registry would post traces to
	// localhost:4318 every few seconds.
	p, err := c.startProc("registry", bin, []string{"serve", cfgPath}, []string{"OTEL_TRACES_EXPORTER=none"})
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, p, "http://"+addr+"/v2/", nil, 60*time.Second); err != nil {
		return err
	}
	hosts := filepath.Join(c.registryHostsDir(), MirroredRegistry)
	if err := os.MkdirAll(hosts, 0o755); err != nil {
		return err
	}
	toml := fmt.Sprintf(`# %[1]s is served by the local cluster's registry (e2e/cluster/registry.go).
server = "http://%[2]s"
[host."http://%[2]s"]
  capabilities = ["pull", "resolve"]
`, MirroredRegistry, addr)
	if err := os.WriteFile(filepath.Join(hosts, "hosts.toml"), []byte(toml), 0o644); err != nil {
		return err
	}
	c.mu.Lock()
	c.state.RegistryAddr = addr
	err = c.state.save(c.Dir)
	c.mu.Unlock()
	return err
}

// registryHostsDir is containerd's registry config_path (one hosts.toml per
// registry host).
func (c *Cluster) registryHostsDir() string { return filepath.Join(c.Dir, "containerd", "certs.d") }

// PublishImage pushes an image to the cluster's registry under ref, which
// must name MirroredRegistry (e.g. ghcr.io/tessera-gpu/x:latest): pods
// that name ref pull it from there. It returns the manifest digest.
func (c *Cluster) PublishImage(ctx context.Context, img Image, ref string) (string, error) {
	image, err := buildImage(img)
	if err != nil {
		return "", err
	}
	// A config of its own, so the published image has an image ID of its
	// own: when a pull moved the ID that img.Ref (imported, pull policy
	// Never) shares with it to the pulled manifest, containerd 1.6's CRI
	// stopped finding img.Ref ("ErrImageNeverPull: not present").
	cf, err := image.ConfigFile()
	if err != nil {
		return "", err
	}
	cf = cf.DeepCopy()
	cf.Config.Labels = map[string]string{"dev.tessera.published-as": ref}
	if image, err = mutate.ConfigFile(image, cf); err != nil {
		return "", err
	}
	return c.pushImage(ctx, image, ref)
}

// localRef is ref's name in the cluster's registry.
func (c *Cluster) localRef(ref string) (name.Tag, error) {
	c.mu.Lock()
	addr := c.state.RegistryAddr
	c.mu.Unlock()
	if addr == "" {
		return name.Tag{}, fmt.Errorf("%s: the cluster runs no registry (it runs with the real node)", ref)
	}
	repo, ok := strings.CutPrefix(ref, MirroredRegistry+"/")
	if !ok {
		return name.Tag{}, fmt.Errorf("%s: the local registry serves only %s/... images", ref, MirroredRegistry)
	}
	return name.NewTag(addr+"/"+repo, name.Insecure)
}

func (c *Cluster) pushImage(ctx context.Context, image v1.Image, ref string) (string, error) {
	local, err := c.localRef(ref)
	if err != nil {
		return "", fmt.Errorf("publishing: %w", err)
	}
	if err := remote.Write(local, image, remote.WithContext(ctx)); err != nil {
		return "", fmt.Errorf("publishing %s to %s: %w", ref, local, err)
	}
	d, err := image.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
}

// PublishedDigest is the manifest digest the cluster's registry serves for
// ref (a MirroredRegistry reference), as a pull resolves it.
func (c *Cluster) PublishedDigest(ctx context.Context, ref string) (string, error) {
	local, err := c.localRef(ref)
	if err != nil {
		return "", err
	}
	desc, err := remote.Head(local, remote.WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("%s in the cluster's registry: %w", ref, err)
	}
	return desc.Digest.String(), nil
}
