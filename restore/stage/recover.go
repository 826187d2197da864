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
	Finished   int // switches a dead run had begun, now complete
	RolledBack int // switches a dead run had begun, undone (the old entries could not all be moved aside)
	Removed    int // staging and old directories removed
	Unmarked   int // stale marks of unfinished restores removed from used volumes
	// Pending counts replacing switches a dead run began, left alone: only
	// a replacing run finishes them.
	Pending int
}

func (r Report) String() string {
	var parts []string
	if r.Finished > 0 {
		parts = append(parts, fmt.Sprintf("finished %d switch(es) to a restored snapshot that an interrupted run had begun", r.Finished))
	}
	if r.RolledBack > 0 {
		parts = append(parts, fmt.Sprintf("undid %d switch(es) that an interrupted run had begun and could not finish", r.RolledBack))
	}
	if r.Removed > 0 {
		parts = append(parts, fmt.Sprintf("removed %d staging director(ies) an interrupted restore left", r.Removed))
	}
	if r.Unmarked > 0 {
		parts = append(parts, "removed the mark of an unfinished restore from a volume that has been used since")
	}
	return strings.Join(parts, "; ")
}

// changed reports whether Recover changed anything.
func (r Report) changed() bool { return r.Finished+r.RolledBack+r.Removed+r.Unmarked > 0 }

// Recover clears what dead runs left at root (with the exclusive lock
// held). A journaled switch is finished: every check had passed before
// its journal was written. A replacing one, though, moves the old
// contents aside, so it is finished only with finishReplacing (a run that
// replaces the contents itself); otherwise it is left alone, with all its
// state, and counted as Pending. Staging directories of runs that never
// reached their switch are removed. A mark of an unfinished restore goes
// once the volume holds data of its own.
func Recover(root string, finishReplacing bool, warn func(path, msg string)) (Report, error) {
	return recoverAt(root, finishReplacing, "", "", warn)
}

// RecoverOwn is Recover for a restore that failed after its helper named
// its run (id): that run's own switch is finished like a replacing run's
// (its journal is written only once every check passed), others' pending
// replacing switches are left alone.
func RecoverOwn(root, id string, warn func(path, msg string)) (Report, error) {
	return recoverAt(root, false, "", id, warn)
}

// recoverAt is Recover, sparing the state of the live run keep.
func recoverAt(root string, finishReplacing bool, keep, own string, warn func(path, msg string)) (Report, error) {
	if warn == nil {
		warn = func(string, string) {}
	}
	var rep Report
	st, err := scan(root)
	if err != nil {
		return rep, err
	}
	pending := map[string]bool{}
	for _, e := range st.entries {
		if e.kind != kindSwap || e.id == keep {
			continue
		}
		j, err := readJournal(root, e.id)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return rep, err
		}
		if !realDir(root, name(e.id, kindNew), st.dev) {
			return rep, fmt.Errorf("%w: the journal %s has no staging directory beside it, which volbak never leaves; inspect %s and remove the %s%s.* entries by hand", ErrForeign, name(e.id, kindSwap), root, Prefix, e.id)
		}
		// A replacing switch whose staged entries are all in place has
		// only the removal of what it replaced left to do, which its
		// journal proves a replacing run gave up: anyone may finish that.
		finishing := finishReplacing || e.id == own
		if j.Replace && !finishing && !(j.Phase == kindNew && emptyDir(filepath.Join(root, name(e.id, kindNew)))) {
			pending[e.id] = true
			rep.Pending++
			continue
		}
		if !finishing && j.Root != nil {
			// Owner, mode and xattrs for the target itself, from a
			// journal anyone who can write the target could have planted:
			// applied only by a run that replaces the target (and then
			// applies its own snapshot's).
			j.Root = nil
			warn(".", "the snapshot's owner and mode for the target itself were not applied after an interrupted restore: a restore with --force applies them")
		}
		switch err := finish(root, e.id, j, nil, warn); {
		case errors.Is(err, errRolledBack):
			rep.RolledBack++
		case err != nil:
			return rep, fmt.Errorf("finish the switch an interrupted restore began: %w", err)
		default:
			sweep(root, e.id, j, warn)
			rep.Finished++
		}
	}
	if st, err = scan(root); err != nil {
		return rep, err
	}
	for _, e := range st.entries {
		if pending[e.id] || e.id == keep {
			continue
		}
		n := name(e.id, e.kind)
		p := filepath.Join(root, n)
		var err error
		switch e.kind {
		case kindNew, kindOld:
			// An old directory without a journal is never volbak's own
			// (the journal outlives it): it is not removed unless empty.
			switch {
			case !isRealDir(p):
				err = unix.Unlink(p) // a link or file in volbak's name: the link goes, never its target
			case e.kind == kindOld && !emptyDir(p):
				continue
			case realDir(root, n, st.dev):
				if err := removeState(root, n); err != nil {
					warn(n, err.Error())
				}
				rep.Removed++
			default:
				warn(n, "is a mount point; left alone")
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
	if rep.changed() {
		return rep, syncDir(root)
	}
	return rep, nil
}
