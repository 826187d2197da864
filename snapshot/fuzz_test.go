package snapshot

import (
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// goodManifest is a manifest as a backup writes it, under its key.
func goodManifest() (string, []byte) {
	m := New("db", t0)
	m.ID, m.Host, m.SHA256, m.Size = "aaaa1111", "h", strings.Repeat("0", 64), 42
	m.Archive = m.base() + ".tar.zst"
	m.Labels, m.DriverOpts = map[string]string{"app": "db"}, map[string]string{"type": "tmpfs"}
	data, _ := json.Marshal(m)
	return m.Key(), data
}

// A manifest accepted under a key is the one a backup would have written
// there: it names that key, its archive beside it, and reads back the same
// once written out again. Whatever the bytes, reading them never panics.
func FuzzManifest(f *testing.F) {
	key, good := goodManifest()
	f.Add(key, good)
	f.Add(key, []byte("{not json"))
	f.Add("db/20260103T000000Z-0bad0002.json", []byte(`{"format": 99, "id": "0bad0002", "volume": "db", "host": "far"}`))
	f.Add("db/20260102T030405Z-bbbb2222.json", []byte(strings.ReplaceAll(string(good), `"db`, `"web`)))
	f.Add("db/20260102T030405Z-aaaa1111.json", []byte(strings.Replace(string(good), `"size":42`, `"size":-1`, 1)))
	f.Add("db/20260102T030405Z-aaaa1111.json", []byte(strings.Replace(string(good), `"created":"2026-01-02T03:04:05Z"`, `"created":"2026-01-02T04:04:05.999+01:00"`, 1)))
	f.Add("db/20260102T030405Z-aaaa1111.json", []byte(`{"ID":"aaaa1111","Volume":"db","created":"2026-01-02T03:04:05Z","archive":"db/20260102T030405Z-aaaa1111.tar.zst","sha256":"`+strings.Repeat("f", 64)+`","format":-5}`))
	f.Fuzz(func(t *testing.T, key string, data []byte) {
		if _, _, _, ok := parseKey(key); !ok {
			return // List never reads it
		}
		m, err := parse(key, data)
		if err != nil {
			p := Problem{Key: key, Err: err}
			_, _, _ = p.Error(), p.Fix(), p.Name()
			return
		}
		if m.ManifestKey != key || m.Key() != key || m.Archive != archiveOf(key) || !IsKey(m.Archive) {
			t.Fatalf("accepted under %q: names key %q, archive %q", key, m.Key(), m.Archive)
		}
		if !ValidName(m.Volume) || len(m.SHA256) != 64 || m.Size < 0 || m.Format > FormatVersion {
			t.Fatalf("accepted: %+v", m)
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("an accepted manifest cannot be written out: %v", err)
		}
		m2, err := parse(key, again)
		if err != nil {
			t.Fatalf("written out again, it is refused: %v\n%s", err, again)
		}
		if !m2.Created.Equal(m.Created) {
			t.Fatalf("created %v, read back %v", m.Created, m2.Created)
		}
		m2.Created = m.Created
		// An empty map is left out when written ("omitempty").
		for _, mm := range []*Manifest{&m, &m2} {
			if len(mm.Labels) == 0 {
				mm.Labels = nil
			}
			if len(mm.DriverOpts) == 0 {
				mm.DriverOpts = nil
			}
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("read back differs:\n%+v\n%+v", m, m2)
		}
	})
}

// The names a user types and the keys volbak writes: a key that parses is
// printed back exactly from its parts, its archive's key parses to the
// same time; a ref splits at its first @, which no valid volume name holds.
func FuzzKey(f *testing.F) {
	for _, k := range []string{
		"db/20260102T030405Z-aaaa1111.json", "db/notes.json", "x.json", "stray/whatever.json", "db/sub/20260102T030405Z-abcd.json",
		"db/20260102T030405Z-ABCD.json", "db/2026-01-02-abcd.json", ".hidden/20260102T030405Z-abcd.json",
		"pgdata/20261126T000000Z-0123abcd.tar.zst", "pgdata/20261126T000000Z-0123abcd.tar", "pgdata/dump.tar.zst",
		"a/b/20261126T000000Z-0123abcd.tar.zst", "-x/20261126T000000Z-0123abcd.tar.zst", ".volbak-write-probe",
		"db", "db@ab12", "db@", "pgdata@20261125T101010Z-3f9a1c2b", "a@b@c", "db/20260230T000000Z-ab.json",
	} {
		f.Add(k)
	}
	valid := regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
	f.Fuzz(func(t *testing.T, s string) {
		if ValidName(s) != valid.MatchString(s) {
			t.Fatalf("ValidName(%q) = %v, the rule says %v", s, ValidName(s), !ValidName(s))
		}
		vol, id := ParseRef(s)
		if strings.Contains(s, "@") && (vol+"@"+id != s || strings.Contains(vol, "@")) || !strings.Contains(s, "@") && (vol != s || id != "") {
			t.Fatalf("ParseRef(%q) = %q, %q", s, vol, id)
		}
		if ValidName(vol) {
			if v2, id2 := ParseRef(vol + "@" + id); v2 != vol || id2 != id {
				t.Fatalf("ParseRef(%q@%q) = %q, %q", vol, id, v2, id2)
			}
		}

		vol, created, id, ok := parseKey(s)
		if strings.HasSuffix(s, ".json") && IsKey(s) != ok {
			t.Fatalf("IsKey(%q) = %v, parseKey says %v", s, IsKey(s), ok)
		}
		if !ok {
			return
		}
		if back := vol + "/" + created.Format(timeLayout) + "-" + id + ".json"; back != s || !ValidName(vol) || !isHexID(id) {
			t.Fatalf("parseKey(%q) = %q %v %q, which prints as %q", s, vol, created, id, back)
		}
		if at, ok := ArchiveTime(archiveOf(s)); !ok || !at.Equal(created) || !IsKey(archiveOf(s)) {
			t.Fatalf("the archive of %q: %v %v", s, at, ok)
		}
	})
}
