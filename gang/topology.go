package gang

import (
	"sort"
	"strings"
)

// topoIndex groups nodes into domains of a required topology (one domain per
// distinct combination of the required label values) and, inside each, into
// sub-domains of the preferred label. Label lookups on 5000 nodes per plan
// would dominate planning, so the index is cached until a node is added,
// removed or relabelled (Ledger.labelGen).
type topoIndex struct {
	labelGen uint64
	keys     []string
	pref     string
	domains  []domain
	byName   map[string]int
}

// domain is one required-topology domain.
type domain struct {
	name  string // "key=value[,key=value]"; "" when no key is required
	nodes []*nodeState
	// sub[i] is the preferred sub-domain of nodes[i], -1 without the label.
	sub      []int32
	subNames []string
	// caps is planner scratch (under the ledger lock): capacity of
	// nodes[i] for the gang being planned, 0 when blocked.
	caps []int32
}

func topoCacheKey(keys []string, pref string) string {
	return strings.Join(keys, "\x00") + "\x01" + pref
}

// domainName is the name of the domain n belongs to for keys; ok is false
// when n lacks one of the labels (then it is not eligible).
func domainName(n *nodeState, keys []string) (string, bool) {
	if len(keys) == 0 {
		return "", true
	}
	var b strings.Builder
	for i, k := range keys {
		v, ok := n.labels[k]
		if !ok {
			return "", false
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(v)
	}
	return b.String(), true
}

// topoIndexLocked returns the (cached) index for keys and pref.
func (l *Ledger) topoIndexLocked(keys []string, pref string) *topoIndex {
	ck := topoCacheKey(keys, pref)
	if t := l.topo[ck]; t != nil && t.labelGen == l.labelGen {
		return t
	}
	if len(l.topo) > 64 {
		clear(l.topo) // keys come from user objects; keep the cache bounded
	}
	names := make([]string, 0, len(l.nodes))
	for name := range l.nodes {
		names = append(names, name)
	}
	sort.Strings(names)
	t := &topoIndex{labelGen: l.labelGen, keys: keys, pref: pref, byName: map[string]int{}}
	subIDs := map[string]int32{}
	for _, name := range names {
		n := l.nodes[name]
		dn, ok := domainName(n, keys)
		if !ok {
			continue
		}
		di, ok := t.byName[dn]
		if !ok {
			di = len(t.domains)
			t.byName[dn] = di
			t.domains = append(t.domains, domain{name: dn})
		}
		d := &t.domains[di]
		var sub int32 = -1
		if v, ok := n.labels[pref]; ok && pref != "" {
			sk := dn + "\x00" + v
			id, seen := subIDs[sk]
			if !seen {
				id = int32(len(d.subNames))
				subIDs[sk] = id
				d.subNames = append(d.subNames, v)
			}
			sub = id
		}
		d.nodes = append(d.nodes, n)
		d.sub = append(d.sub, sub)
		d.caps = append(d.caps, 0)
	}
	l.topo[ck] = t
	return t
}
