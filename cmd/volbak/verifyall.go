package main

import (
	"strings"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/volbak/volbak/encrypt"
	"github.com/volbak/volbak/progress"
	"github.com/volbak/volbak/restore"
	"github.com/volbak/volbak/snapshot"
)

// verifyRow is one line of verify --all: a snapshot, or something in the
// storage that is not one.
type verifyRow struct {
	Snapshot string `json:"snapshot"` // VOLUME@ID, or the key of what is not a snapshot
	Size     int64  `json:"size"`
	Result   string `json:"result"` // ok, corrupt, failed, problem, unfinished
	Reason   string `json:"reason,omitempty"`
}

// verifyAll reads every snapshot of the storage (of volume, of host, if
// given) end to end, and reports what else it holds: manifests that
// cannot be used (their archive missing among them) and archives without
// a manifest. Corrupt snapshots make it exit 3, any other failure 1;
// archives without a manifest are reported, not failed (a backup killed
// before its manifest, or one writing it now). With deep, each snapshot
// is restored and its files compared with its index instead.
func verifyAll(ctx context.Context, g *globals, from, volume, host string, asJSON, deep bool, keys *encrypt.Identities) error {
	st, cat, err := g.catalog(ctx, from, volume)
	if err != nil {
		return err
	}
	defer st.Close()
	var dv *deepVerifier
	if deep {
		v, closeEng, err := g.deepVerifier(ctx, st)
		if err != nil {
			return err
		}
		defer closeEng()
		dv = v
	}
	var rows []verifyRow
	corrupt, failed := 0, 0
	for _, m := range cat.Snapshots {
		if host != "" && m.Host != host {
			continue
		}
		row := verifyRow{Snapshot: m.Volume + "@" + m.ID, Size: m.Size, Result: "ok"}
		var v restore.Verified
		if dv != nil {
			_, row.Reason, err = dv.verify(ctx, m, keys)
		} else {
			v, err = restore.Verify(ctx, st, m, keys)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("verify interrupted at %s: %w", row.Snapshot, ctx.Err())
		}
		switch {
		case errors.Is(err, restore.ErrCorrupt):
			row.Result, row.Reason = "corrupt", err.Error()
			corrupt++
		case err != nil:
			row.Result, row.Reason = "failed", err.Error()
			failed++
		case v.Transit != nil:
			row.Reason = "sound in storage; " + v.Transit.Error()
		}
		if err == nil && v.Sealed {
			row.Reason = strings.TrimPrefix(row.Reason+"; ", "; ") + "encrypted: stored bytes checked, contents not (no key given)"
		}
		rows = append(rows, row)
	}
	for _, p := range cat.Problems {
		if host != "" && p.Host != host {
			continue
		}
		rows = append(rows, verifyRow{Snapshot: p.Name(), Result: "problem", Reason: fmt.Sprintf("%v; %s", p.Err, p.Fix())})
		failed++
	}
	for _, o := range cat.Orphans {
		what := "an archive"
		if snapshot.IsIndex(o.Key) {
			what = "an index"
		}
		rows = append(rows, verifyRow{Snapshot: o.Key, Size: o.Size, Result: "unfinished",
			Reason: what + " without a manifest: a backup killed before its manifest, or one writing it now (never listed; volbak run removes it after a week)"})
	}
	if asJSON {
		if rows == nil {
			rows = []verifyRow{}
		}
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SNAPSHOT\tSIZE\tRESULT\tREASON")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Snapshot, progress.Bytes(r.Size), r.Result, r.Reason)
		}
		tw.Flush()
	}
	checked := len(rows) - len(cat.Orphans)
	switch {
	case corrupt > 0:
		return fmt.Errorf("%w: %d of %d snapshot(s) corrupt, %d more failed (see the table)", restore.ErrCorrupt, corrupt, checked, failed)
	case failed > 0:
		return fmt.Errorf("%d of %d snapshot(s) failed (see the table)", failed, checked)
	}
	return nil
}
