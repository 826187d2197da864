package stage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Report says what Recover did.
type Report struct {
	Finished int // switches a dead run had begun, now complete
	Removed  int // staging and old directories removed
	Unmarked int // stale marks of unfinished restores removed from used volumes
}

func (r Report) String() string {
	var parts []string
	if r.Finished > 0 {
		parts = append(parts, fmt.Sprintf("finished %d switch(es) to a restored snapshot that an interrupted run had begun", r.Finished))
	}
	if r.Removed > 0 {
		parts = append(parts, fmt.Sprintf("removed %d staging director(ies) an interrupted restore left", r.Removed))
	}
	if r.Unmarked > 0 {
		parts = append(parts, "removed the mark of an unfinished restore from a volume that has been used since")
	}
	return strings.Join(parts, "; ")
}

// Recover clears what dead runs left at root (with the exclusive lock
// held). A journaled switch is finished: every check had passed before
// its journal was written. A replacing one, though, moves the old
// contents aside, so it is finished only by a replacing run (replace);
// otherwise Recover returns ErrSwitchPending and touches nothing.
// Staging directories of runs that never reached their switch are
// removed; with replace, so is an old directory no journal names. A mark
// of an unfinished restore goes once the volume holds data of its own.
func Recover(root string, replace bool, warn func(path, msg string)) (Report, error) {
	var rep Report
	st, err := scan(root)
	if err != nil {
		return rep, err
	}
	for _, e := range st.entries {
		if e.kind != kindSwap {
			continue
		}
		j, err := readJournal(root, e.id)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return rep, err
		}
		if j.Replace && !replace {
			return rep, fmt.Errorf("%w: %s holds a switch that an interrupted restore with --force or --in-place began, and only such a restore finishes it (it moves the old contents aside)", ErrSwitchPending, root)
		}
		if j.Phase == kindOld && !realDir(root, name(e.id, kindNew), st.dev) {
			return rep, fmt.Errorf("%w: the journal %s has no staging directory beside it, which volbak never leaves; inspect %s and remove the %s%s.* entries by hand", ErrForeign, name(e.id, kindSwap), root, Prefix, e.id)
		}
		if err := finish(root, e.id, j, warn); err != nil {
			return rep, fmt.Errorf("finish the switch an interrupted restore began: %w", err)
		}
		rep.Finished++
	}
	if st, err = scan(root); err != nil {
		return rep, err
	}
	for _, e := range st.entries {
		n := name(e.id, e.kind)
		p := filepath.Join(root, n)
		var err error
		switch e.kind {
		case kindNew, kindOld:
			if e.kind == kindOld && !replace {
				continue // the contents a switch replaced: a replacing run removes them
			}
			switch {
			case realDir(root, n, st.dev):
				err = os.RemoveAll(p)
				rep.Removed++
			case isRealDir(p):
				warn(n, "is a mount point; left alone")
			default:
				err = unix.Unlink(p) // a link or file in volbak's name: the link goes, never its target
			}
		case kindSwapTmp:
			err = unix.Unlink(p)
		case kindIncomplete:
			if st.data {
				err = unix.Unlink(p)
				rep.Unmarked++
			}
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return rep, fmt.Errorf("remove %s: %w", n, err)
		}
	}
	if rep != (Report{}) {
		return rep, syncDir(root)
	}
	return rep, nil
}
