package retention

import (
	"encoding/binary"
	"strconv"
	"testing"
	"time"

	"github.com/volbak/volbak/snapshot"
)

// A span that parses prints back as itself, and never reaches more than a
// century back, nor forward: a cutoff in the future would keep nothing
// but the newest snapshot.
func FuzzSpan(f *testing.F) {
	for _, s := range []string{"30d", "1y6m", "36h", "2y3m4d5h", "", "d", "30", "5s", "1d1y", "1d1d", "-3d", "3 d", "2562048h", "101y", "0h", "100y"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		sp, err := ParseSpan(s)
		if err != nil {
			return
		}
		if again, err := ParseSpan(sp.String()); err != nil || again != sp {
			t.Fatalf("ParseSpan(%q) = %+v, printed %q, which parses as %+v, %v", s, sp, sp.String(), again, err)
		}
		cutoff := sp.Before(now)
		if cutoff.After(now) || cutoff.Before(now.AddDate(-101, 0, 0)) {
			t.Fatalf("ParseSpan(%q) = %+v: cutoff %v, from %v", s, sp, cutoff, now)
		}
	})
}

// A count that parses is -1 (unlimited) or more, and prints back as itself.
func FuzzCount(f *testing.F) {
	for _, s := range []string{"unlimited", "-1", "7", "-2", "0", "+3", "007", "9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseCount(s)
		if err != nil {
			return
		}
		if n < -1 {
			t.Fatalf("ParseCount(%q) = %d", s, n)
		}
		if again, err := ParseCount(strconv.Itoa(n)); err != nil || again != n {
			t.Fatalf("ParseCount(%q) = %d, which prints back as %d, %v", s, n, again, err)
		}
	})
}

// Whatever the policy and the snapshots' times, hosts and zone: every
// snapshot is decided once, a kept one says why and a dropped one does
// not, and a group that holds snapshots keeps at least one, its newest.
func FuzzDecide(f *testing.F) {
	f.Add(int8(2), int8(0), int8(0), int8(0), int8(0), int8(0), "", uint8(0), int64(0), []byte("\x00\x00\x00\x01\x00\x00\x10\x00"))
	f.Add(int8(0), int8(0), int8(7), int8(4), int8(6), int8(0), "", uint8(1), int64(0), []byte("abcdefghijklmnopqrstuvwxyz0123456789"))
	f.Add(int8(0), int8(24), int8(0), int8(0), int8(0), int8(-1), "30d", uint8(2), int64(1795670000), []byte("\xff\xff\xff\xff\x00\x00\x00\x00\x7f\xff\xff\xff"))
	f.Add(int8(0), int8(0), int8(0), int8(0), int8(0), int8(0), "1y6m", uint8(3), int64(1), []byte("\x01\x02\x03\x04\x05"))
	zones := []string{"UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham", "Asia/Kathmandu"}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, last, hourly, daily, weekly, monthly, yearly int8, within string, zone uint8, now int64, data []byte) {
		count := func(n int8) int { return max(int(n), -1) }
		p := Policy{Last: count(last), Hourly: count(hourly), Daily: count(daily), Weekly: count(weekly), Monthly: count(monthly), Yearly: count(yearly)}
		if within != "" {
			sp, err := ParseSpan(within)
			if err != nil {
				return
			}
			p.Within = sp
		}
		loc, err := time.LoadLocation(zones[int(zone)%len(zones)])
		if err != nil {
			t.Fatal(err)
		}
		p.Location = loc
		if now != 0 {
			p.Now = time.Unix(now, 0)
		}
		// Four bytes a snapshot: a time within ±68 years of base, at
		// second granularity, and two bits of host and volume.
		var snaps []snapshot.Manifest
		for i := 0; i+4 <= len(data); i += 4 {
			v := binary.BigEndian.Uint32(data[i:])
			snaps = append(snaps, snapshot.Manifest{
				ID: strconv.Itoa(i), Volume: "v" + strconv.Itoa(int(v&1)), Host: "h" + strconv.Itoa(int(v>>1&1)),
				Created: base.Add(time.Duration(int32(v)) * time.Second),
			})
		}
		groups := Apply(p, snaps)
		seen := 0
		for _, g := range groups {
			if len(g.Decisions) == 0 {
				t.Fatalf("group %s/%s holds no decision", g.Host, g.Volume)
			}
			if !g.Decisions[0].Keep {
				t.Fatalf("%+v drops the newest snapshot of %s/%s", p, g.Host, g.Volume)
			}
			for i, d := range g.Decisions {
				seen++
				if d.Keep != (len(d.Reasons) > 0) {
					t.Fatalf("decision %+v: keep %v with reasons %q", d.Manifest, d.Keep, d.Reasons)
				}
				if d.Manifest.Host != g.Host || d.Manifest.Volume != g.Volume {
					t.Fatalf("%s/%s in group %s/%s", d.Manifest.Host, d.Manifest.Volume, g.Host, g.Volume)
				}
				if i > 0 && d.Manifest.Created.After(g.Decisions[i-1].Manifest.Created) {
					t.Fatalf("decisions not newest first")
				}
			}
		}
		if seen != len(snaps) {
			t.Fatalf("%d snapshots, %d decisions", len(snaps), seen)
		}
	})
}
