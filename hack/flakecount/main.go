// Command flakecount counts, per test, how often it failed across repeated
// `go test -json` runs. hack/flake.sh feeds it one file per run:
//
//	go run ./hack/flakecount [-failed] [-trim PREFIX] run-1.json run-2.json ...
//
// Without file arguments it reads one run from stdin. Each test (Package and
// Test, subtests included) gets a row "failures/runs", runs being how many
// of the inputs reported a pass, fail or skip for it. A package-level
// failure (an event with Test == "" and Action == "fail") that no failing
// test of that package explains in the same run (a build failure, a panic
// outside a test, TestMain failing, the -timeout panic) counts as a failure
// of the row "<pkg> (package)"; package rows that never failed that way are
// not printed. Rows are sorted by failures, most first. The exit status is 1
// when any row failed at least once, 2 on bad input.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
)

// event is the part of a test2json event (go doc test2json) that counts.
type event struct {
	Action  string
	Package string
	Test    string
}

// Row is one test's (or one package's) tally.
type Row struct {
	Package  string
	Test     string // "" for the package row
	Failures int
	Runs     int
}

// Name is the row's label in the table, without the package path's prefix
// trim (the module path, say).
func (r Row) Name(trim string) string {
	pkg := strings.TrimPrefix(r.Package, trim)
	if pkg == "" {
		pkg = r.Package
	}
	if r.Test == "" {
		return pkg + " (package)"
	}
	return pkg + " " + r.Test
}

type key struct{ pkg, test string }

// Counter accumulates runs.
type Counter struct {
	rows map[key]*Row
	runs int
}

// NewCounter returns an empty Counter.
func NewCounter() *Counter { return &Counter{rows: map[key]*Row{}} }

func (c *Counter) row(k key) *Row {
	r := c.rows[k]
	if r == nil {
		r = &Row{Package: k.pkg, Test: k.test}
		c.rows[k] = r
	}
	return r
}

// AddRun reads one run's test2json stream. Lines that are not JSON (for
// example stray stderr) are ignored; a read error is returned.
func (c *Counter) AddRun(r io.Reader) error {
	c.runs++
	testFailed := map[string]bool{} // package -> a test of it failed in this run
	pkgOutcome := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil || ev.Package == "" {
			continue
		}
		switch ev.Action {
		case "pass", "fail", "skip":
		default:
			continue
		}
		if ev.Test == "" {
			pkgOutcome[ev.Package] = ev.Action
			continue
		}
		row := c.row(key{ev.Package, ev.Test})
		row.Runs++
		if ev.Action == "fail" {
			row.Failures++
			testFailed[ev.Package] = true
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	for pkg, outcome := range pkgOutcome {
		if outcome == "skip" { // no test files
			continue
		}
		row := c.row(key{pkg, ""})
		row.Runs++
		if outcome == "fail" && !testFailed[pkg] {
			row.Failures++
		}
	}
	return nil
}

// Runs is the number of runs added.
func (c *Counter) Runs() int { return c.runs }

// Rows returns the tests, and the package rows that failed, sorted by
// failures (most first), then by name.
func (c *Counter) Rows() []Row {
	var out []Row
	for _, r := range c.rows {
		if r.Test == "" && r.Failures == 0 {
			continue
		}
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Failures != out[j].Failures {
			return out[i].Failures > out[j].Failures
		}
		if out[i].Package != out[j].Package {
			return out[i].Package < out[j].Package
		}
		return out[i].Test < out[j].Test
	})
	return out
}

// Report writes the table (only failing rows when onlyFailed; package paths
// without the prefix trim) and the summary line, and returns how many rows
// failed at least once.
func Report(w io.Writer, rows []Row, runs int, onlyFailed bool, trim string) int {
	failed := 0
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TEST\tFAILURES/RUNS")
	for _, r := range rows {
		if r.Failures > 0 {
			failed++
		} else if onlyFailed {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d/%d\n", r.Name(trim), r.Failures, r.Runs)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "flake.sh: %d runs, %d tests, %d failed at least once\n", runs, len(rows), failed)
	return failed
}

func main() {
	onlyFailed := flag.Bool("failed", false, "print only the rows that failed at least once (the summary still counts all)")
	trim := flag.String("trim", "", "package path prefix to leave out of the table, e.g. the module path and a slash")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: flakecount [-failed] [-trim PREFIX] [run.json ...]   (no files: one run from stdin)")
		flag.PrintDefaults()
	}
	flag.Parse()
	c := NewCounter()
	if flag.NArg() == 0 {
		if err := c.AddRun(os.Stdin); err != nil {
			fmt.Fprintln(os.Stderr, "flakecount: stdin:", err)
			os.Exit(2)
		}
	}
	for _, name := range flag.Args() {
		if err := addFile(c, name); err != nil {
			fmt.Fprintln(os.Stderr, "flakecount:", err)
			os.Exit(2)
		}
	}
	if Report(os.Stdout, c.Rows(), c.Runs(), *onlyFailed, *trim) > 0 {
		os.Exit(1)
	}
}

func addFile(c *Counter, name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	err = c.AddRun(f)
	return errors.Join(err, f.Close())
}
