package engine

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// HelperRepo is the repository name of the image volbak builds for its helpers.
const HelperRepo = "volbak-helper"

// helperImage returns the ID of the image helpers run from, building and
// loading it the first time it is missing.
func (e *Engine) helperImage(ctx context.Context) (string, error) {
	e.imageOnce.Do(func() { e.imageID, e.imageErr = e.ensureImage(ctx) })
	return e.imageID, e.imageErr
}

func (e *Engine) ensureImage(ctx context.Context) (string, error) {
	if e.opts.HelperImage != "" {
		res, err := e.cli.ImageInspect(ctx, e.opts.HelperImage)
		if err != nil {
			return "", fmt.Errorf("helper image %s: %w (it must already be on the daemon; no registry is asked)", e.opts.HelperImage, err)
		}
		return res.ID, nil
	}
	bin, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own binary for the helper image: %w", err)
	}
	arch, err := binaryArch(bin)
	if err != nil {
		return "", err
	}
	info, err := e.info(ctx)
	if err != nil {
		return "", fmt.Errorf("daemon info: %w", err)
	}
	if want := goArch(info.Architecture); want != arch || info.OSType != "linux" {
		return "", fmt.Errorf("this volbak is linux/%s but the daemon runs %s/%s: run a volbak built for the daemon's platform, or pass --helper-image", arch, info.OSType, info.Architecture)
	}
	img, err := describeImage(bin, arch, HelperRepo+":"+e.opts.Version)
	if err != nil {
		return "", err
	}
	if _, err := e.cli.ImageInspect(ctx, img.id); err == nil {
		return img.id, nil
	} else if !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("inspect helper image: %w", err)
	}
	if err := e.loadImage(ctx, img); err != nil {
		return "", err
	}
	e.pruneOldImages(ctx, img.id)
	return img.id, nil
}

// loadImage loads img into the daemon, and checks that it is there.
func (e *Engine) loadImage(ctx context.Context, img *image) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(img.writeSave(pw)) }()
	res, err := e.cli.ImageLoad(ctx, pr, client.ImageLoadWithQuiet(true))
	if err != nil {
		pr.CloseWithError(err)
		return fmt.Errorf("load helper image: %w", err)
	}
	defer res.Close()
	// The daemon answers with a JSON message stream; an error is one of them.
	dec := json.NewDecoder(res)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("load helper image: %w", err)
		}
		if msg.Error != "" {
			return fmt.Errorf("load helper image: %s", msg.Error)
		}
	}
	if _, err := e.cli.ImageInspect(ctx, img.id); err != nil {
		return fmt.Errorf("helper image %s missing after load: %w", img.id, err)
	}
	return nil
}

// pruneOldImages removes helper images that a newer load left untagged
// (an upgrade, a rebuilt binary), so that they do not pile up. One still in
// use by a running helper is refused by the daemon and stays.
// Tidying is not worth stalling a backup for: a busy daemon gets 2 s.
func (e *Engine) pruneOldImages(ctx context.Context, current string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	res, err := e.cli.ImageList(ctx, client.ImageListOptions{
		Filters: client.Filters{}.Add("label", LabelHelper+"=image").Add("dangling", "true"),
	})
	if err != nil {
		return
	}
	for _, im := range res.Items {
		if im.ID != current {
			e.cli.ImageRemove(ctx, im.ID, client.ImageRemoveOptions{})
		}
	}
}

// binaryArch checks that bin can run alone in an empty image (statically
// linked Linux ELF) and returns its GOARCH.
func binaryArch(bin string) (string, error) {
	if runtime.GOOS != "linux" {
		return "", fmt.Errorf("volbak on %s cannot put itself into a Linux helper image: pass --helper-image with a volbak image", runtime.GOOS)
	}
	f, err := elf.Open(bin)
	if err != nil {
		return "", fmt.Errorf("read own binary %s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked and cannot serve as the helper: build it with CGO_ENABLED=0, or pass --helper-image", bin)
		}
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_ARM:
		return "arm", nil
	case elf.EM_PPC64:
		return "ppc64le", nil
	case elf.EM_S390:
		return "s390x", nil
	case elf.EM_RISCV:
		return "riscv64", nil
	}
	return "", fmt.Errorf("%s: unknown machine %v", bin, f.Machine)
}

// goArch maps the daemon's `uname -m` to GOARCH.
func goArch(m string) string {
	switch m {
	case "x86_64":
		return "amd64"
	case "aarch64":
		return "arm64"
	case "armv7l", "armv6l":
		return "arm"
	}
	return m
}

// image is a one-layer image holding the volbak binary as /volbak and an
// empty /data to mount the volume on. Every byte of it is a function of the
// binary, so the same binary always gives the same image ID.
type image struct {
	bin         string
	binSize     int64
	tag         string
	config      []byte
	id          string // sha256 of config, the image ID
	layerDigest string // hex sha256 of the uncompressed layer tar
	layerSize   int64
}

var epoch = time.Unix(0, 0).UTC()

func describeImage(bin, arch, tag string) (*image, error) {
	st, err := os.Stat(bin)
	if err != nil {
		return nil, err
	}
	img := &image{bin: bin, binSize: st.Size(), tag: tag}
	h := sha256.New()
	cw := &counter{w: h}
	if err := img.writeLayer(cw); err != nil {
		return nil, fmt.Errorf("hash helper layer: %w", err)
	}
	img.layerDigest = hex.EncodeToString(h.Sum(nil))
	img.layerSize = cw.n

	var cfg struct {
		Architecture string    `json:"architecture"`
		OS           string    `json:"os"`
		Created      time.Time `json:"created"`
		Config       struct {
			Entrypoint []string          `json:"Entrypoint"`
			Labels     map[string]string `json:"Labels"`
		} `json:"config"`
		RootFS struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	cfg.Architecture, cfg.OS, cfg.Created = arch, "linux", epoch
	cfg.Config.Entrypoint = []string{"/volbak"}
	cfg.Config.Labels = map[string]string{LabelHelper: "image"}
	cfg.RootFS.Type = "layers"
	cfg.RootFS.DiffIDs = []string{"sha256:" + img.layerDigest}
	img.config, err = json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(img.config)
	img.id = "sha256:" + hex.EncodeToString(sum[:])
	return img, nil
}

func (img *image) writeLayer(w io.Writer) error {
	f, err := os.Open(img.bin)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "data/", Mode: 0o755, ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "volbak", Mode: 0o755, Size: img.binSize, ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
		return err
	}
	if n, err := io.Copy(tw, f); err != nil {
		return err
	} else if n != img.binSize {
		return errors.New("binary changed while building the helper image")
	}
	return tw.Close()
}

// writeSave streams the image in `docker save` layout, the layer read from
// the binary a second time rather than held in memory.
func (img *image) writeSave(w io.Writer) error {
	cfgName := strings.TrimPrefix(img.id, "sha256:") + ".json"
	layerName := img.layerDigest + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": cfgName, "RepoTags": []string{img.tag}, "Layers": []string{layerName},
	}})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	file := func(name string, size int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: epoch, Format: tar.FormatUSTAR})
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: img.layerDigest + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
		return err
	}
	if err := file(layerName, img.layerSize); err != nil {
		return err
	}
	if err := img.writeLayer(tw); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{cfgName, img.config}, {"manifest.json", manifest}} {
		if err := file(f.name, int64(len(f.data))); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

type counter struct {
	w io.Writer
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
