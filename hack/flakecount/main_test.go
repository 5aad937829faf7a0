package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// run1: TestA passes, TestB fails in its subtest, pkg/c fails to build,
// pkg/d has no test files, and a non-JSON line slips in.
const run1 = `{"Action":"start","Package":"ex/a"}
{"Action":"run","Package":"ex/a","Test":"TestA"}
{"Action":"output","Package":"ex/a","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"pass","Package":"ex/a","Test":"TestA","Elapsed":0.01}
{"Action":"run","Package":"ex/a","Test":"TestB"}
{"Action":"run","Package":"ex/a","Test":"TestB/one"}
{"Action":"pass","Package":"ex/a","Test":"TestB/one","Elapsed":0}
{"Action":"run","Package":"ex/a","Test":"TestB/two"}
{"Action":"fail","Package":"ex/a","Test":"TestB/two","Elapsed":0}
{"Action":"fail","Package":"ex/a","Test":"TestB","Elapsed":0}
{"Action":"fail","Package":"ex/a","Elapsed":0.02}
# ex/c
{"ImportPath":"ex/c [ex/c.test]","Action":"build-fail"}
{"Action":"start","Package":"ex/c"}
{"Action":"output","Package":"ex/c","Output":"FAIL\tex/c [build failed]\n"}
{"Action":"fail","Package":"ex/c","Elapsed":0,"FailedBuild":"ex/c [ex/c.test]"}
{"Action":"skip","Package":"ex/d","Elapsed":0}
`

// run2: everything passes; pkg/c builds and its TestC passes.
const run2 = `{"Action":"pass","Package":"ex/a","Test":"TestA"}
{"Action":"pass","Package":"ex/a","Test":"TestB/one"}
{"Action":"pass","Package":"ex/a","Test":"TestB/two"}
{"Action":"pass","Package":"ex/a","Test":"TestB"}
{"Action":"pass","Package":"ex/a"}
{"Action":"pass","Package":"ex/c","Test":"TestC"}
{"Action":"pass","Package":"ex/c"}
{"Action":"skip","Package":"ex/d"}
`

// run3: ex/a panics outside any test (the -timeout panic, say): the
// package fails with no failing test to explain it.
const run3 = `{"Action":"pass","Package":"ex/a","Test":"TestA"}
{"Action":"output","Package":"ex/a","Output":"panic: test timed out after 20m0s\n"}
{"Action":"fail","Package":"ex/a","Elapsed":1200}
`

func TestCounter(t *testing.T) {
	c := NewCounter()
	for _, run := range []string{run1, run2, run3} {
		if err := c.AddRun(strings.NewReader(run)); err != nil {
			t.Fatal(err)
		}
	}
	want := []Row{
		{Package: "ex/a", Failures: 1, Runs: 3}, // run3 only: run1's failure is TestB's
		{Package: "ex/a", Test: "TestB", Failures: 1, Runs: 2},
		{Package: "ex/a", Test: "TestB/two", Failures: 1, Runs: 2},
		{Package: "ex/c", Failures: 1, Runs: 2}, // the build failure
		{Package: "ex/a", Test: "TestA", Runs: 3},
		{Package: "ex/a", Test: "TestB/one", Runs: 2},
		{Package: "ex/c", Test: "TestC", Runs: 1},
	}
	if diff := cmp.Diff(want, c.Rows()); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	if c.Runs() != 3 {
		t.Errorf("runs %d, want 3", c.Runs())
	}

	var out bytes.Buffer
	if failed := Report(&out, c.Rows(), c.Runs(), true, "ex/"); failed != 4 {
		t.Errorf("Report: %d failed, want 4", failed)
	}
	wantOut := `TEST         FAILURES/RUNS
a (package)  1/3
a TestB      1/2
a TestB/two  1/2
c (package)  1/2
flake.sh: 3 runs, 7 tests, 4 failed at least once
`
	if diff := cmp.Diff(wantOut, out.String()); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
}

func TestCounterAllPass(t *testing.T) {
	c := NewCounter()
	if err := c.AddRun(strings.NewReader(run2)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if failed := Report(&out, c.Rows(), c.Runs(), false, ""); failed != 0 {
		t.Errorf("Report: %d failed, want 0:\n%s", failed, out.String())
	}
	if !strings.HasSuffix(out.String(), "flake.sh: 1 runs, 5 tests, 0 failed at least once\n") {
		t.Errorf("report:\n%s", out.String())
	}
}
