// Package archive is volbak's stream format and the helper's side of it: a
// tar with full metadata (PAX: nanosecond mtimes, numeric owners, xattrs),
// compressed with zstd. Any `tar --zstd -xf` can open it by hand.
package archive

import (
	"fmt"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// Level is a named zstd level, as the CLI spells it.
type Level string

// The levels volbak offers. The default was chosen by the benchmark (see the
// README): on a 2-core machine the fastest level is the one that keeps the
// helper ahead of the disk, and costs about 1.5% in size.
const (
	LevelFastest Level = "fastest"
	LevelDefault Level = "default"
	LevelBetter  Level = "better"
	LevelBest    Level = "best"
)

// DefaultLevel is what `volbak backup` uses without --level.
const DefaultLevel = LevelFastest

// ParseLevel accepts a level name; the error lists the names.
func ParseLevel(s string) (Level, error) {
	switch l := Level(strings.ToLower(s)); l {
	case LevelFastest, LevelDefault, LevelBetter, LevelBest:
		return l, nil
	}
	return "", fmt.Errorf("unknown zstd level %q (use fastest, default, better or best)", s)
}

func (l Level) encoderLevel() zstd.EncoderLevel {
	switch l {
	case LevelDefault:
		return zstd.SpeedDefault
	case LevelBetter:
		return zstd.SpeedBetterCompression
	case LevelBest:
		return zstd.SpeedBestCompression
	}
	return zstd.SpeedFastest
}

// Stats is what a pass over an archive counted.
type Stats struct {
	Entries  int64 `json:"entries"`  // tar entries of every kind, the root directory included
	Bytes    int64 `json:"bytes"`    // size of the uncompressed tar stream
	Warnings int64 `json:"warnings"` // files that changed while read, entries skipped
}
