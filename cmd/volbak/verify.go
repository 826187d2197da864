package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/volbak/volbak/progress"
	"github.com/volbak/volbak/restore"
)

// verifyCmd is `volbak verify`: one snapshot, or --all, read and checked
// against its manifest; --deep restores it and compares every file.
func verifyCmd(g *globals) *cobra.Command {
	var from, host, volume string
	var all, asJSON, deep bool
	var keys keyFlags
	c := &cobra.Command{
		Use:   "verify VOLUME[@SNAPSHOT] --from STORAGE [--deep] | verify --all --from STORAGE [--volume V] [--deep]",
		Short: "Read a snapshot end to end and check it",
		Long: `Read a snapshot (the latest of VOLUME, or the one SNAPSHOT names) end to end
without restoring it: its stored size and sha256, every zstd checksum, the tar
structure, and the entry count and size in its manifest. Exit 0 only if all
hold; 3 if the snapshot is corrupt (1 if its manifest is another volume's,
from a newer volbak, or unreadable by this user). A read that fails those
checks is read again, whole, before the snapshot is called corrupt: if the
second read holds, the stored snapshot is sound and the bytes were damaged
on their way (verify passes, with a warning about that path); the same
failure twice is damage in storage (exit 3). Restore does the same, and
fails with exit 1 on damage in transit: run it again. With snapshots of the
volume from several hosts, the latest needs --host NAME.

--all checks every snapshot in STORAGE (of --volume, of --host) and prints
a table (snapshot, size, result, reason; --json for scripts); it also
reports manifests that cannot be used (an archive missing among them) and
archives without a manifest (unfinished backups: reported, not failed).
Exit 3 if a snapshot is corrupt, 1 if anything else failed.

An encrypted snapshot is decrypted and checked the same way with
--identity FILE or --passphrase-file FILE; without a key only its stored
bytes are checked (size and sha256), and verify says it could not look
inside.

--deep also restores the snapshot into a throwaway volume (volbak-verify-ID-…,
removed on every path, Ctrl-C included) and compares every restored file with
the index the backup recorded: type, size, sha256 of the content, mode, owner,
mtime, link target, device numbers. It lists the first differences and exits
3 if there are any. A snapshot of an older volbak has no index: it is only
restored, and said so. It needs the Docker daemon, room for the restored
volume, and an encrypted snapshot's key.

` + snapshotHelp + `

` + storageHelp,
		Example: `  volbak verify pgdata --from /srv/backups
  volbak verify pgdata@3f9a1c2b --from /srv/backups
  volbak verify --all --from s3://bucket/prefix --json
  volbak verify pgdata --from /srv/backups --deep`,
		Args: args(0, 1),
		RunE: func(c *cobra.Command, a []string) error {
			ids, err := keys.keys()
			if err != nil {
				return err
			}
			if all {
				if len(a) > 0 {
					return usageError{errors.New("verify --all takes no VOLUME: give --volume to check one volume's snapshots")}
				}
				if volume != "" {
					if err := checkVolumeName(volume); err != nil {
						return err
					}
				}
				return verifyAll(c.Context(), g, from, volume, host, asJSON, deep, ids)
			}
			if len(a) != 1 || volume != "" || asJSON {
				return usageError{errors.New("verify takes VOLUME[@SNAPSHOT], or --all (with --volume, --json)")}
			}
			vol, id, err := ref(a[0])
			if err != nil {
				return err
			}
			ctx := c.Context()
			st, m, err := g.findIn(ctx, from, vol, id, host)
			if err != nil {
				return err
			}
			defer st.Close()
			if deep {
				return verifyDeepOne(ctx, g, st, m, ids)
			}
			stats, err := restore.Verify(ctx, st, m, ids)
			if err != nil {
				return fmt.Errorf("%s@%s: %w", m.Volume, m.ID, err)
			}
			if stats.Transit != nil {
				fmt.Fprintf(g.stderr, "volbak: warning: %s@%s: %v\n", m.Volume, m.ID, stats.Transit)
			}
			if stats.Sealed {
				fmt.Fprintf(g.stdout, "%s@%s stored bytes ok (%s, sha256 %s); encrypted, so its contents were not checked: give --identity or --passphrase-file to look inside\n",
					m.Volume, m.ID, progress.Bytes(m.Size), m.SHA256)
				return nil
			}
			fmt.Fprintf(g.stdout, "%s@%s ok: %d files, %s uncompressed, sha256 %s\n", m.Volume, m.ID, stats.Entries, progress.Bytes(stats.Bytes), m.SHA256)
			return nil
		},
	}
	c.Flags().StringVar(&from, "from", "", "storage to read: directory, s3:// or sftp:// URL")
	c.Flags().StringVar(&host, "host", "", "only snapshots made on this host (see the HOST column of list)")
	c.Flags().BoolVar(&all, "all", false, "check every snapshot in STORAGE, and report what is not one")
	c.Flags().StringVar(&volume, "volume", "", "with --all: only this volume's snapshots")
	c.Flags().BoolVar(&asJSON, "json", false, "with --all: print the table as JSON")
	c.Flags().BoolVar(&deep, "deep", false, "restore into a throwaway volume and compare every file with the backup's index")
	keys.add(c.Flags())
	return c
}
