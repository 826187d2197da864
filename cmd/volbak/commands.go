package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/backup"
	"github.com/volbak/volbak/progress"
	"github.com/volbak/volbak/restore"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/dest"
	"github.com/volbak/volbak/storage/s3"
	"github.com/volbak/volbak/storage/sftp"
)

const storageHelp = `Storage is one of
  /srv/backups, file:///srv/backups   a directory on this host
  s3://BUCKET/PREFIX                  an S3 bucket (AWS or any S3-compatible store)
  sftp://USER@HOST:PORT/PATH          a directory over SFTP
Snapshots are laid out the same in each:
  <volume>/<UTC time>-<id>.tar.zst              the archive (tar + zstd, open with tar --zstd -xf)
  <volume>/<UTC time>-<id>.tar.zst.age          an encrypted one (age -d first)
  <volume>/<UTC time>-<id>.index.jsonl.zst[.age] its file index (JSON lines: zstd -dc; age -d first)
  <volume>/<UTC time>-<id>.json                 its manifest, written last
An archive without a manifest is an unfinished backup and is never listed.
Secrets never go in the URL: see 'volbak help storage'.`

const snapshotHelp = `SNAPSHOT is an id from list, any unique prefix of one, 'latest', or the
manifest's name TIME-ID (pgdata@20261125T101010Z-3f9a1c2b, as list's warnings
name manifests), which settles two manifests sharing one id.`

func storageTopic() *cobra.Command {
	return &cobra.Command{
		Use:   "storage",
		Short: "Where snapshots go: directories, S3, SFTP, and their credentials",
		Long: storageHelp[:strings.Index(storageHelp, "\nSecrets")] + `

S3
` + s3.URLHelp + `

SFTP
` + sftp.URLHelp,
	}
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "volbak",
		Short: "Back up Docker volumes and restore them",
		Long: `volbak backs up Docker volumes through a short-lived helper container that
mounts the volume read-only and streams it as a zstd-compressed tar, with every
file's owner, mode, times, xattrs, links and holes, to storage; and restores
snapshots into fresh volumes with their labels and driver.

The helper image is built from this very binary (no registry is needed) and
loaded into the daemon named by DOCKER_HOST (default: the local socket).
With a daemon on this host the archive goes between volbak and its helper
over a unix socket, not through the daemon; VOLBAK_STREAM=attach sends it
through the daemon's attach stream (as with a remote DOCKER_HOST), =direct
fails rather than fall back; --log-level debug says which each helper took.

Exit codes: 0 ok, 1 failed, 2 bad command line, 3 snapshot corrupt,
130 interrupted (what was begun is undone).

` + storageHelp,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see volbak %s --help)", err, c.Name())}
	})
	root.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		if g.stallTimeout < 0 {
			return usageError{fmt.Errorf("--stall-timeout %s: give a duration of 0 (wait for ever) or more", g.stallTimeout)}
		}
		return nil
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.logFormat, "log-format", "auto", "log format: text, json, or auto (text on a terminal, json otherwise)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.BoolVarP(&g.quiet, "quiet", "q", false, "no progress meter")
	pf.StringVar(&g.helperImage, "helper-image", "", "run helpers from this image (its /volbak must be this volbak) instead of one built from this binary")
	pf.StringVar(&g.ssh.KeyFile, "ssh-key", "", "sftp: private key file (default: ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa)")
	pf.StringVar(&g.ssh.KnownHosts, "known-hosts", "", "sftp: known_hosts file to check the server's host key against (default ~/.ssh/known_hosts)")
	pf.StringVar(&g.ssh.Fingerprint, "host-fingerprint", "", "sftp: accept only the host key with this fingerprint (SHA256:..., as ssh-keygen -l prints)")
	pf.StringVar(&g.ssh.PasswordFile, "ssh-password-file", "", "sftp: log in with the password in this file")
	pf.DurationVar(&g.stallTimeout, "stall-timeout", storage.DefaultStallTimeout, "s3/sftp: give a storage up (for the rest of the run) once it has held volbak this long without a byte moving, retries included; 0: wait forever")
	root.AddCommand(backupCmd(g), listCmd(g), restoreCmd(g), verifyCmd(g), deleteCmd(g), forgetCmd(g), runCmd(g), healthcheckCmd(g), storageTopic())
	return root
}

func args(min int, max int) cobra.PositionalArgs {
	return func(c *cobra.Command, a []string) error {
		if len(a) < min || (max >= 0 && len(a) > max) {
			return usageError{fmt.Errorf("%s takes %s (see volbak %s --help)", c.Name(), c.Use[len(c.Name())+1:], c.Name())}
		}
		return nil
	}
}

func backupCmd(g *globals) *cobra.Command {
	var to []string
	var level string
	var seal sealFlags
	c := &cobra.Command{
		Use:   "backup VOLUME... --to STORAGE [--to STORAGE...]",
		Short: "Back up volumes as new snapshots",
		Long: `Back up each VOLUME as a new snapshot in STORAGE. A missing storage directory
is created. With several --to, each volume is read once and the one stream
goes to every destination; a destination that fails does not stop the others,
each is reported, and volbak exits 1 if any failed. A slow destination slows
the backup rather than filling memory. Two --to that name the same storage
(the same directory once symlinks are resolved, or through a bind mount;
the same URL) are written once, and volbak says so.

Each volume is read by its own helper container, with the volume mounted
read-only, no network and only the capability to read every file. The volume
is not stopped: stop what writes to it first for a consistent snapshot (the
sidecar, volbak run, does that by label). A file that changes while read is
reported as a warning and the archive stays valid: one that grew is cut at the
size it had, one that shrank is padded with zeros, and one rewritten in place
(a database's pages) may hold old and new content side by side.

If one volume fails, the others are still backed up, and volbak exits 1.
A failed or interrupted backup leaves no snapshot listed anywhere (an S3
multipart upload is aborted, a temp file removed).

Levels (zstd): fastest (the default; about 1.5% larger than default, a quarter
less CPU), default, better, best (much slower).

Encryption: --encrypt-to age1… (an age public key, as age-keygen prints it),
--encrypt-to "ssh-ed25519 AAAA… comment" (an SSH public key), or
--encrypt-to-file FILE (recipients one per line, as age -R reads them) store
the archive as an age file, <id>.tar.zst.age; --passphrase-file FILE uses a
passphrase instead (age scrypt; it cannot be combined with recipients).
volbak encrypts the stream itself (the helper never sees a key), with no temp
file. The manifest names the recipients (public keys, SSH keys by their
fingerprint) and records the sha256 of the stored bytes and of what they
decrypt to; never a secret. Restore and verify need --identity or
--passphrase-file; by hand: age -d -i KEY ARCHIVE | zstd -d | tar -x.

` + storageHelp,
		Example: `  volbak backup pgdata --to /srv/backups
  volbak backup pgdata redis-data --to file:///srv/backups --level default
  volbak backup pgdata --to s3://bucket/prefix
  volbak backup pgdata --to sftp://backup@nas:22/srv/volbak
  volbak backup pgdata --to /srv/backups --to s3://bucket/offsite
  volbak backup pgdata --to s3://bucket/offsite --encrypt-to age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p`,
		Args: args(1, -1),
		RunE: func(c *cobra.Command, vols []string) error {
			for _, v := range vols {
				if err := checkVolumeName(v); err != nil {
					return err
				}
			}
			lvl, err := archive.ParseLevel(level)
			if err != nil {
				return usageError{err}
			}
			if len(to) == 0 {
				return usageError{errors.New("backup needs --to STORAGE (a directory, s3:// or sftp:// URL)")}
			}
			recipients, err := seal.recipients()
			if err != nil {
				return err
			}
			ctx := c.Context()
			set, err := dest.OpenAll(ctx, to, g.destOptions())
			if err != nil {
				return err
			}
			defer set.Close()
			if err := set.Err(); err != nil {
				return err
			}
			sts, openErrs := set.Storages, set.Failed
			for _, n := range set.Notes {
				fmt.Fprintf(g.stderr, "volbak: --to %s\n", n)
			}
			for _, err := range openErrs {
				fmt.Fprintf(g.stderr, "volbak: %v\n", err)
			}
			for _, st := range sts {
				g.sweep(ctx, st)
			}
			limitMemory(sts)
			eng, err := g.engine(ctx)
			if err != nil {
				return err
			}
			defer eng.Close()
			opts := backup.Options{Level: lvl, Version: version, Log: g.logger(), Progress: g.progress(), Encrypt: recipients}
			var failed, partial []string
			var firstErr error
			for _, v := range vols {
				res, err := backup.Volume(ctx, eng, sts, v, opts)
				m := res.Manifest
				for i, st := range sts {
					if res.Errs[i] == nil {
						fmt.Fprintf(g.stdout, "%s@%s  %s (%s uncompressed, %d files) in %.1fs  %s\n",
							m.Volume, m.ID, progress.Bytes(m.Size), progress.Bytes(m.Uncompressed), m.Files, m.Duration, st)
					} else if len(sts) > 1 && res.Errs[i] != err && ctx.Err() == nil { // not the one error of the whole backup; it names st
						fmt.Fprintf(g.stderr, "volbak: %s: %v\n", v, res.Errs[i])
					}
				}
				// After the snapshots that were written are said: one
				// written before an interrupt stays.
				if err != nil && ctx.Err() != nil {
					return err
				}
				if err != nil {
					if len(vols) > 1 { // a single failure is reported once, by main
						fmt.Fprintf(g.stderr, "volbak: %s: %v\n", v, err)
					}
					if res.OK() > 0 {
						partial = append(partial, v)
					} else {
						failed = append(failed, v)
					}
					if firstErr == nil {
						firstErr = err
					}
				}
			}
			switch {
			case len(failed)+len(partial) == 1 && len(vols) == 1:
				return firstErr
			case len(failed) > 0:
				return fmt.Errorf("%d of %d volumes failed: %s", len(failed), len(vols), strings.Join(failed, ", "))
			case len(partial) > 0:
				return fmt.Errorf("%d of %d volumes were not written to every destination (the others hold them): %s", len(partial), len(vols), strings.Join(partial, ", "))
			case len(openErrs) > 0:
				return fmt.Errorf("%d of %d destinations could not be opened; the others hold the backup", len(openErrs), len(openErrs)+len(sts))
			}
			return nil
		},
	}
	c.Flags().StringArrayVar(&to, "to", nil, "storage to write to: directory, s3:// or sftp:// URL (repeatable)")
	c.Flags().StringVar(&level, "level", string(archive.DefaultLevel), "zstd level: fastest, default, better, best")
	seal.add(c.Flags())
	return c
}

func listCmd(g *globals) *cobra.Command {
	var from, volume string
	var asJSON bool
	c := &cobra.Command{
		Use:   "list --from STORAGE",
		Short: "List snapshots",
		Long: `List the snapshots in STORAGE, oldest first: volume, snapshot id, the host
that made it (the Docker daemon's name), time (UTC), stored size,
uncompressed size, number of entries, and for an encrypted snapshot "age"
and what opens it ("passphrase", or the number of recipients). Unfinished backups
(archives without a manifest) are not listed. --json prints the manifests.
A manifest that cannot be used (damaged, from a newer volbak, unreadable by
this user, saying another volume, time or id than its name, or whose archive
is missing) is not listed: a warning on stderr names it and what to do about
it (delete it, read it as its owner, move it into the volume it says,
upgrade volbak). Files that are not named like volbak's are ignored, and so
is what lies deeper than VOLUME/FILE. A directory this user may not read
that cannot be a volume's (a root-owned lost+found) is left out, with a
warning. Partial archives left by backups that were killed (SIGKILL, the OOM
killer) are counted in a warning once no backup holds them and they have gone
unmodified for an hour (a day over SFTP; in S3, unfinished multipart
uploads begun a day ago with no part for a day); list removes nothing, the
next backup to STORAGE does.

` + storageHelp,
		Example: `  volbak list --from /srv/backups
  volbak list --from /srv/backups --volume pgdata --json`,
		Args: args(0, 0),
		RunE: func(c *cobra.Command, _ []string) error {
			if volume != "" {
				if err := checkVolumeName(volume); err != nil {
					return err
				}
			}
			st, err := g.openFrom(c.Context(), from)
			if err != nil {
				return err
			}
			defer st.Close()
			cat, err := snapshot.List(c.Context(), st, volume)
			if err != nil {
				return err
			}
			// Warnings go to stderr, after the table: stdout stays a table,
			// or pure JSON.
			defer func() {
				for _, p := range cat.Problems {
					fmt.Fprintf(g.stderr, "volbak: warning: %v; %s\n", &p, p.Fix())
				}
				if len(cat.Skipped) > 0 {
					fmt.Fprintf(g.stderr, "volbak: warning: left out %s of %s, which this user may not read and which cannot be a volume's directory (%v)\n",
						strings.Join(cat.Skipped, ", "), st, cat.SkipErr)
				}
				g.reportStale(c.Context(), st, volume)
			}()
			ms := cat.Snapshots
			if asJSON {
				if ms == nil {
					ms = []snapshot.Manifest{}
				}
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(ms)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "VOLUME\tSNAPSHOT\tHOST\tTIME\tSIZE\tUNCOMPRESSED\tFILES\tENCRYPTED")
			for _, m := range ms {
				host := m.Host
				if host == "" {
					host = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", m.Volume, m.ID, host, m.Created.Format(time.RFC3339),
					progress.Bytes(m.Size), progress.Bytes(m.Uncompressed), m.Files, encrypted(m))
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&from, "from", "", "storage to read: directory, s3:// or sftp:// URL")
	c.Flags().StringVar(&volume, "volume", "", "only this volume's snapshots")
	c.Flags().BoolVar(&asJSON, "json", false, "print manifests as JSON")
	return c
}

// encrypted is list's mark of an encrypted snapshot.
func encrypted(m snapshot.Manifest) string {
	switch e := m.Encryption; {
	case e == nil:
		return "-"
	case e.Passphrase:
		return "age (passphrase)"
	case len(e.Recipients) == 1:
		return "age (1 recipient)"
	default:
		return fmt.Sprintf("age (%d recipients)", len(e.Recipients))
	}
}

func restoreCmd(g *globals) *cobra.Command {
	var from, host, toVolume, toDir, driver string
	var o restore.Options
	var inPlace bool
	var labels, driverOpts []string
	var keys keyFlags
	c := &cobra.Command{
		Use:   "restore VOLUME[@SNAPSHOT] --from STORAGE (--to-volume NAME | --in-place | --to-dir PATH)",
		Short: "Restore a snapshot into a volume or a directory",
		Long: `Restore a snapshot of VOLUME (its latest, or the one SNAPSHOT names)
into the volume NAME, into VOLUME itself (--in-place), or into a host
directory (--to-dir; no helper; owners need root).

A missing volume is created with the snapshot's labels, driver and driver
options (override them with --label, --driver, --driver-opt). Driver options
that mount existing storage (a bind-mounted host directory, a block device,
an NFS or CIFS export) are dropped with a warning, since such a "new" volume
would be the old data under a new name: the restore goes into a plain local
volume (--keep-driver-opts keeps them, knowingly).

A target that exists and is not empty is refused. --force (and --in-place)
replace its contents, atomically: the snapshot is restored into a staging
directory inside the target and checked whole (sha256, every zstd frame, the
tar's end, the entry count) before the old entries are switched out. So
replacing needs room for a second copy: the free space is checked first
(--no-space-check skips that). A restore that fails, is interrupted or runs
out of space leaves the old contents exactly as they were; one killed
outright leaves a staging directory that the next volbak restore or backup
of the target clears, or a switch it had begun (every check had passed),
which the next restore finishes: one that replaced contents is finished
only by a restore with --force or --in-place, once its own snapshot has
checked out, and a backup refuses the volume meanwhile. A mount point
inside the target refuses --force: volbak never moves or removes another
filesystem's data. A lost+found with files in it is never removed.

A restore into a volume that a running container uses is refused, naming
the containers; --stop-containers stops them, restores, and starts them
again as soon as the snapshot is in place, or when the restore failed
(unless what it left could not be cleared: then they stay stopped, and
the message names them). Containers started with --rm are refused. The restored data is synced to disk before it is
switched in, so a power cut never leaves a restored tree of empty files.

An archive whose entries would land outside the target (absolute names,
"..", a path through a symlink or a file, a hardlink to outside), or that
declares more than a restore takes (names past PATH_MAX, xattrs past 64 KiB,
a zstd window past 64 MiB), is refused, naming its first such entry;
nothing of it is kept.

--to-dir restores onto this host, as root, so device nodes, setuid and
setgid bits and file capabilities are left out there (with a warning that
counts them): a device node would open that device of the host to whoever
may open the node, a setuid-root file would be a root shell for whoever may
run it. --allow-special restores them, for a snapshot you trust. A volume
always gets them, as backed up.

When several hosts back the same volume name up into STORAGE, the latest
needs --host NAME (an id alone is enough).

An encrypted snapshot (list marks it) needs its key: --identity FILE (an
age identity file, or an SSH private key without a passphrase) or
--passphrase-file FILE. A missing or wrong key is refused before anything
is created or written, naming the keys the snapshot was encrypted to.

` + snapshotHelp + `

` + storageHelp,
		Example: `  volbak restore pgdata --from /srv/backups --to-volume pgdata-restored
  volbak restore pgdata --from s3://bucket/x --in-place --stop-containers
  volbak restore pgdata@3f9a1c2b --from /srv/backups --to-volume pgdata --force
  volbak restore pgdata --from /srv/backups --to-dir /tmp/pgdata-inspect`,
		Args: args(1, 1),
		RunE: func(c *cobra.Command, a []string) error {
			vol, id, err := ref(a[0])
			if err != nil {
				return err
			}
			targets := 0
			for _, set := range []bool{toVolume != "", toDir != "", inPlace} {
				if set {
					targets++
				}
			}
			if targets != 1 {
				return usageError{errors.New("restore needs exactly one of --to-volume NAME, --in-place and --to-dir PATH")}
			}
			if inPlace {
				toVolume, o.Replace = vol, true
			}
			if toVolume != "" {
				if err := checkVolumeName(toVolume); err != nil {
					return err
				}
			} else if o.StopContainers || o.KeepDriverOpts || len(labels) > 0 || driver != "" {
				return usageError{errors.New("--stop-containers, --keep-driver-opts, --label and --driver go with a volume target")}
			}
			if o.AllowSpecial && toDir == "" {
				return usageError{errors.New("--allow-special goes with --to-dir (a volume always gets device nodes, setuid bits and capabilities as backed up)")}
			}
			if o.Labels, err = keyValues("--label", labels); err != nil {
				return err
			}
			if o.DriverOpts, err = keyValues("--driver-opt", driverOpts); err != nil {
				return err
			}
			if len(o.DriverOpts) > 0 && driver == "" {
				return usageError{errors.New("--driver-opt goes with --driver")}
			}
			if o.Keys, err = keys.keys(); err != nil {
				return err
			}
			ctx := c.Context()
			st, m, err := g.findIn(ctx, from, vol, id, host)
			if err != nil {
				return err
			}
			defer st.Close()
			o.TargetVolume, o.ToDir, o.Driver = toVolume, toDir, driver
			o.Log, o.Progress = g.logger(), g.progress()
			if p, ok := st.(interface{ Path() string }); ok {
				o.StoragePath = p.Path()
			}
			var eng restore.Engine
			if toVolume != "" {
				e, err := g.engine(ctx)
				if err != nil {
					return err
				}
				defer e.Close()
				eng = e
			}
			if err := restore.Restore(ctx, eng, st, m, o); err != nil {
				return err
			}
			target := "volume " + toVolume
			if toDir != "" {
				target = "directory " + toDir
			}
			fmt.Fprintf(g.stdout, "restored %s@%s (%s, %d files) into %s\n", m.Volume, m.ID, m.Created.Format(time.RFC3339), m.Files, target)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&from, "from", "", "storage to read: directory, s3:// or sftp:// URL")
	f.StringVar(&host, "host", "", "only snapshots made on this host (see the HOST column of list)")
	f.StringVar(&toVolume, "to-volume", "", "volume to restore into (created if missing)")
	f.BoolVar(&inPlace, "in-place", false, "restore into the volume the snapshot came from, replacing its contents atomically (as --to-volume VOLUME --force)")
	f.StringVar(&toDir, "to-dir", "", "host directory to restore into instead")
	f.BoolVar(&o.Replace, "force", false, "replace a non-empty target's contents (atomically; needs room for a second copy)")
	f.BoolVar(&o.StopContainers, "stop-containers", false, "stop running containers that use the target volume, and start them again afterwards")
	f.BoolVar(&o.KeepDriverOpts, "keep-driver-opts", false, "recreate driver options that mount existing storage (bind, device, NFS) instead of dropping them")
	f.BoolVar(&o.NoSpaceCheck, "no-space-check", false, "skip the check that the target has room for the snapshot")
	f.BoolVar(&o.AllowSpecial, "allow-special", false, "with --to-dir: restore device nodes, setuid/setgid bits and file capabilities onto this host too (left out otherwise: they would open the host's devices or give root to whoever runs them)")
	f.StringArrayVar(&labels, "label", nil, "KEY=VALUE label for the new volume, over the snapshot's (repeatable)")
	f.StringVar(&driver, "driver", "", "volume driver for the new volume instead of the snapshot's")
	f.StringArrayVar(&driverOpts, "driver-opt", nil, "KEY=VALUE driver option with --driver (repeatable)")
	keys.add(f)
	return c
}

func (g *globals) openFrom(ctx context.Context, from string) (storage.Storage, error) {
	if from == "" {
		return nil, usageError{errors.New("--from STORAGE is required (where backups were written to)")}
	}
	return g.open(ctx, from, false)
}

// findIn opens the storage --from names and finds VOLUME[@ID] in it; the
// caller closes the storage. A manifest that cannot be used is an error
// only when it is the one asked for.
func (g *globals) findIn(ctx context.Context, from, vol, id, host string) (storage.Storage, snapshot.Manifest, error) {
	st, cat, err := g.catalog(ctx, from, vol)
	if err != nil {
		return nil, snapshot.Manifest{}, err
	}
	m, err := cat.Find(vol, id, host)
	if err != nil {
		st.Close()
		var p *snapshot.Problem
		if errors.As(err, &p) {
			err = fmt.Errorf("%w; %s", err, p.Fix())
			if p.Damaged() { // not one that is elsewhere, newer, or another user's
				err = fmt.Errorf("%w: %w", restore.ErrCorrupt, err)
			}
		}
		return nil, snapshot.Manifest{}, err
	}
	if latest(id) {
		g.passedOver(cat, host, m)
	}
	return st, m, nil
}

func latest(id string) bool { return id == "" || id == "latest" }

// passedOver warns of the manifests newer than m that cannot be used, when
// m was found as the latest: lest it be taken for the newest backup.
func (g *globals) passedOver(cat snapshot.Catalog, host string, m snapshot.Manifest) {
	for _, p := range cat.PassedOver(m, host) {
		fmt.Fprintf(g.stderr, "volbak: warning: passed over for %s@%s, the latest usable: %v; %s\n", m.Volume, m.ID, &p, p.Fix())
	}
}

// catalog opens the storage --from names and reads vol's manifests.
func (g *globals) catalog(ctx context.Context, from, vol string) (storage.Storage, snapshot.Catalog, error) {
	st, err := g.openFrom(ctx, from)
	if err != nil {
		return nil, snapshot.Catalog{}, err
	}
	cat, err := snapshot.List(ctx, st, vol)
	if err != nil {
		st.Close()
		return nil, snapshot.Catalog{}, err
	}
	return st, cat, nil
}

func keyValues(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageError{fmt.Errorf("%s %q: want KEY=VALUE", flag, kv)}
		}
		out[k] = v
	}
	return out, nil
}

func deleteCmd(g *globals) *cobra.Command {
	var from, host string
	c := &cobra.Command{
		Use:   "delete VOLUME@SNAPSHOT --from STORAGE",
		Short: "Delete one snapshot",
		Long: `Delete the snapshot of VOLUME that SNAPSHOT names from STORAGE.
The manifest goes first, then the archive: an interrupted delete leaves at
worst an unlisted archive, never a listed snapshot without its archive.
SNAPSHOT is required: see volbak list. A manifest that list warns about is
deleted the same way, by the name list gives it, with the archive beside it
if there is one.

Deleting cannot be undone, so what is unclear is refused: a SNAPSHOT that
names more than one manifest; 'latest' when a newer manifest was passed over
(one from a newer volbak is a good snapshot), or with snapshots of the
volume from several hosts and no --host NAME; and a manifest that says
another volume whose directory holds one of the same name (a copy, or the
same file through a link, a bind mount or a filesystem that ignores case:
deleting it could delete the other volume's snapshot).

` + snapshotHelp + `

` + storageHelp,
		Example: `  volbak delete pgdata@3f9a1c2b --from /srv/backups
  volbak delete pgdata@20261125T101010Z-3f9a1c2b --from /srv/backups
  volbak delete pgdata@latest --from s3://bucket/prefix`,
		Args: args(1, 1),
		RunE: func(c *cobra.Command, a []string) error {
			vol, id, err := ref(a[0])
			if err != nil {
				return err
			}
			if id == "" {
				return usageError{fmt.Errorf("delete needs VOLUME@SNAPSHOT (see volbak list --from STORAGE --volume %s)", vol)}
			}
			ctx := c.Context()
			st, cat, err := g.catalog(ctx, from, vol)
			if err != nil {
				return err
			}
			defer st.Close()
			tg, err := cat.FindToDelete(vol, id, host)
			if err != nil {
				return err
			}
			if err := snapshot.Delete(ctx, st, tg.Key); err != nil {
				return err
			}
			if p := tg.Problem; p != nil {
				fmt.Fprintf(g.stdout, "deleted %s (%v) from %s\n", p.Key, p.Err, st)
				return nil
			}
			m := tg.Snapshot
			fmt.Fprintf(g.stdout, "deleted %s@%s (%s) from %s\n", m.Volume, m.ID, m.Created.Format(time.RFC3339), st)
			return nil
		},
	}
	c.Flags().StringVar(&from, "from", "", "storage to delete from: directory, s3:// or sftp:// URL")
	c.Flags().StringVar(&host, "host", "", "only snapshots made on this host (see the HOST column of list)")
	return c
}

// sweep removes the partial archives that backups killed outright left in
// st (see storage.Sweeper). Failing to is a warning: the backup about to
// run matters more.
func (g *globals) sweep(ctx context.Context, st storage.Storage) {
	sw, ok := st.(storage.Sweeper)
	if !ok {
		return
	}
	gone, err := sw.RemoveStale(ctx, "")
	if n, size := total(gone); n > 0 {
		fmt.Fprintf(g.stderr, "volbak: removed %s (%s) that killed backups left in %s\n", partials(n), progress.Bytes(size), st)
	}
	if err != nil {
		fmt.Fprintf(g.stderr, "volbak: warning: %v\n", err)
	}
}

// reportStale warns of partial archives of volume (of every volume if
// empty) in st.
func (g *globals) reportStale(ctx context.Context, st storage.Storage, volume string) {
	sw, ok := st.(storage.Sweeper)
	if !ok {
		return
	}
	prefix := ""
	if volume != "" {
		prefix = volume + "/"
	}
	stale, err := sw.Stale(ctx, prefix)
	if n, size := total(stale); n > 0 {
		fmt.Fprintf(g.stderr, "volbak: warning: %s (%s) in %s left by backups that were killed; the next backup there removes them\n",
			partials(n), progress.Bytes(size), st)
	}
	if err != nil {
		fmt.Fprintf(g.stderr, "volbak: warning: %v\n", err)
	}
}

func partials(n int) string {
	if n == 1 {
		return "1 partial archive"
	}
	return fmt.Sprintf("%d partial archives", n)
}

func total(objs []storage.Object) (n int, size int64) {
	for _, o := range objs {
		size += o.Size
	}
	return len(objs), size
}

// limitMemory tells the garbage collector about long-lived upload buffers
// (S3 parts in flight). Left alone, it lets the heap grow to twice what is
// live before collecting, so 80 MiB of part buffers made a 150 MiB process;
// with a soft limit just above them it collects a little more often
// instead.
func limitMemory(sts []storage.Storage) {
	var bufs int64
	for _, st := range sts {
		if b, ok := st.(interface{ BufferBytes() int64 }); ok {
			bufs += b.BufferBytes()
		}
	}
	// Only ever lower a limit the user set with GOMEMLIMIT.
	if want := bufs + 40<<20; bufs > 0 && want < debug.SetMemoryLimit(-1) {
		debug.SetMemoryLimit(want)
	}
}
