package cluster

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// BuildImage writes an image tarball (the `docker save` layout, which
// `ctr images import` reads) holding img's binary and files in one layer.
// It needs neither a Docker engine nor a registry. The content matches what
// the Dockerfile's final stages produce: the binary at /, a writable /tmp,
// a passwd entry for the nonroot user, and the entrypoint.
func BuildImage(img Image, out string) error {
	ref, err := name.NewTag(img.Ref, name.WeakValidation)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", img.Ref, err)
	}
	image, err := buildImage(img)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := tarball.WriteToFile(out, ref, image); err != nil {
		return fmt.Errorf("writing image %s: %w", img.Ref, err)
	}
	return nil
}

// buildImage is img as an image: one layer, the nonroot user unless img
// says otherwise, the entrypoint.
func buildImage(img Image) (v1.Image, error) {
	files := map[string]string{"/" + filepath.Base(img.Binary): img.Binary}
	for dst, src := range img.Files {
		files[dst] = src
	}
	layerTar, err := layerFromFiles(files)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, err
	}
	image, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	user := img.User
	if user == "" {
		user = "65532"
	}
	entry := img.Entrypoint
	if len(entry) == 0 {
		entry = []string{"/" + filepath.Base(img.Binary)}
	}
	cf, err := image.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config = v1.Config{Entrypoint: entry, User: user, WorkingDir: "/", Env: []string{"PATH=/"}}
	image, err = mutate.ConfigFile(image, cf)
	if err != nil {
		return nil, err
	}
	return image, nil
}

// epoch keeps layers reproducible: the same binary gives the same digest.
var epoch = time.Unix(0, 0)

func layerFromFiles(files map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	addDir := func(d string, mode int64) error {
		if d == "/" || d == "." || dirs[d] {
			return nil
		}
		dirs[d] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: mode, ModTime: epoch})
	}
	if err := addDir("/tmp", 0o1777); err != nil {
		return nil, err
	}
	if err := addDir("/etc", 0o755); err != nil {
		return nil, err
	}
	passwd := []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd)), ModTime: epoch}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(passwd); err != nil {
		return nil, err
	}
	var names []string
	for dst := range files {
		names = append(names, dst)
	}
	sort.Strings(names)
	for _, dst := range names {
		if !path.IsAbs(dst) {
			return nil, fmt.Errorf("image path %q must be absolute", dst)
		}
		var parents []string
		for d := path.Dir(dst); d != "/"; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if err := addDir(d, 0o755); err != nil {
				return nil, err
			}
		}
		b, err := os.ReadFile(files[dst])
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(files[dst])
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: dst[1:], Mode: int64(st.Mode().Perm()), Size: int64(len(b)), ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ShardServerPublished is the shard server's public image name, which the
// example manifests use; the local cluster's registry serves it.
const ShardServerPublished = MirroredRegistry + "/tessera-gpu/tessera-shard-server:latest"

// DefaultImages are the images of Tessera's own binaries found in binDir;
// binaries not built yet are skipped.
func DefaultImages(binDir string) []Image {
	var out []Image
	for _, b := range []struct {
		bin, ref, user, publish string
	}{
		{"tessera-scheduler", "localhost/tessera/scheduler:dev", "", ""},
		{"tessera-device-plugin", "localhost/tessera/device-plugin:dev", "0", ""},
		// The examples in manifests/examples/ name this one: they apply
		// unchanged to the local cluster.
		{"tessera-shard-server", "localhost/tessera/shard-server:dev", "", ShardServerPublished},
		{"tessera-e2e-probe", "localhost/tessera/e2e-probe:dev", "", ""},
	} {
		p := filepath.Join(binDir, b.bin)
		if _, err := os.Stat(p); err == nil {
			out = append(out, Image{Ref: b.ref, Binary: p, User: b.user, Publish: b.publish})
		}
	}
	return out
}
