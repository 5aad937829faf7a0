// Package api holds the contract between Tessera's parts as Go types and
// parse/format functions: the extended resource, slice IDs, the node inventory
// annotation written by the device plugin, and the pod annotations exchanged
// between the scheduler and the device plugin.
//
// Everything in here is public API: names and wire formats must stay stable,
// and parsers must reject what they do not understand with an error that names
// the offending field rather than guessing.
package api
