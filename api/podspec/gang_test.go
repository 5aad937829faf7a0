package podspec_test

import (
	"testing"

	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/gang"
)

// TestGangSourcesMatchGang: podspec.GangSource converts to gang.Source by
// value; the two lists must not drift apart.
func TestGangSourcesMatchGang(t *testing.T) {
	for ps, g := range map[podspec.GangSource]gang.Source{
		podspec.GangPodGroup: gang.SourcePodGroup,
		podspec.GangNative:   gang.SourceNative,
		podspec.GangLWS:      gang.SourceLWS,
	} {
		if gang.Source(ps) != g {
			t.Errorf("podspec %q converts to gang %q, want %q", ps, gang.Source(ps), g)
		}
	}
}
