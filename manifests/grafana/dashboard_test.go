package grafana

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

type dashboard struct {
	UID    string  `json:"uid"`
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
}

var (
	// metricName finds metric names in PromQL; suffixes of histograms are
	// stripped before comparing.
	metricName = regexp.MustCompile(`tessera_[a-z0-9_]+`)
	// nameField finds metric names where the three binaries declare them.
	nameField = regexp.MustCompile(`Name:\s*"([a-z0-9_]+)"`)
)

// declaredMetrics reads the metric names from the sources of the three
// binaries. The scheduler's metrics use component-base with subsystem
// "tessera", so their exposed names carry that prefix.
func declaredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, f := range []string{"scheduler/metrics.go", "deviceplugin/metrics.go", "inference/server/metrics.go"} {
		b, err := os.ReadFile(filepath.Join("..", "..", f))
		if err != nil {
			t.Fatal(err)
		}
		found := 0
		for _, m := range nameField.FindAllStringSubmatch(string(b), -1) {
			name := m[1]
			if !strings.HasPrefix(name, "tessera_") {
				name = "tessera_" + name
			}
			out[name] = true
			found++
		}
		if found == 0 {
			t.Fatalf("no metric names found in %s: has the declaration style changed?", f)
		}
	}
	return out
}

func TestDashboard(t *testing.T) {
	var d dashboard
	if err := json.Unmarshal(Dashboard, &d); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard needs a uid and a title")
	}
	declared := declaredMetrics(t)
	used := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W == 0 {
			t.Errorf("panel %q does not fit the 24-column grid: %+v", p.Title, p.GridPos)
		}
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base := strings.TrimSuffix(m, suffix); base != m && declared[base] {
						m = base
					}
				}
				if !declared[m] {
					t.Errorf("panel %q queries %s, which no binary exports", p.Title, m)
				}
				used[m] = true
			}
		}
	}
	var missing []string
	for m := range declared {
		if !used[m] {
			missing = append(missing, m)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("metrics not on the dashboard: %v", missing)
	}
}
