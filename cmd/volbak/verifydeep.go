package main

import (
	"context"
	"fmt"

	"github.com/volbak/volbak/encrypt"
	"github.com/volbak/volbak/restore"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
)

// deepVerifier runs deep verifies with one daemon connection.
type deepVerifier struct {
	g   *globals
	eng restore.Engine
	st  storage.Storage
}

func (g *globals) deepVerifier(ctx context.Context, st storage.Storage) (*deepVerifier, func(), error) {
	eng, err := g.engine(ctx)
	if err != nil {
		return nil, nil, err
	}
	return &deepVerifier{g: g, eng: eng, st: st}, func() { eng.Close() }, nil
}

// verify deep-verifies m and says in a line what it checked: the
// sentence for a person, or, when the restored files differ from the
// index, the error (ErrCorrupt) naming the first difference.
func (v *deepVerifier) verify(ctx context.Context, m snapshot.Manifest, keys *encrypt.Identities) (restore.Deep, string, error) {
	o := restore.DeepOptions{Log: v.g.logger(), Progress: v.g.progress(), Keys: keys}
	if p, ok := v.st.(interface{ Path() string }); ok {
		o.StoragePath = p.Path()
	}
	d, err := restore.VerifyDeep(ctx, v.eng, v.st, m, o)
	if err != nil {
		return d, "", err
	}
	if !d.Indexed {
		return d, fmt.Sprintf("restores (%d files into a throwaway volume, removed); it has no index (made by an older volbak), so its files could not be compared", m.Files), nil
	}
	return d, fmt.Sprintf("%d files compared, all match (restored into a throwaway volume, removed)", d.Recorded), nil
}

// verifyDeepOne is verify --deep VOLUME[@SNAPSHOT]: differences are
// listed on stdout, the first ones, before the error says how many.
func verifyDeepOne(ctx context.Context, g *globals, st storage.Storage, m snapshot.Manifest, keys *encrypt.Identities) error {
	v, closeEng, err := g.deepVerifier(ctx, st)
	if err != nil {
		return err
	}
	defer closeEng()
	d, said, err := v.verify(ctx, m, keys)
	if len(d.First) > 0 {
		fmt.Fprintf(g.stdout, "%s@%s: %d difference(s) between the restored files and the index; the first %d:\n", m.Volume, m.ID, d.Differences, len(d.First))
		for _, diff := range d.First {
			fmt.Fprintf(g.stdout, "  %s\n", diff)
		}
	}
	if err != nil {
		return fmt.Errorf("%s@%s: %w", m.Volume, m.ID, err)
	}
	if !d.Indexed {
		fmt.Fprintf(g.stderr, "volbak: warning: %s@%s has no index: the deep verify could only restore it\n", m.Volume, m.ID)
	}
	fmt.Fprintf(g.stdout, "%s@%s ok: %s\n", m.Volume, m.ID, said)
	return nil
}
