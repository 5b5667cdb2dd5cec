//! Shoal's integration tests: one binary (one link step), one module per area.

// Shared helpers: in-process coordinator on port 0, clients, raw protocol peers, binaries.
mod util;

// Coordinator + clients in one process over loopback gRPC, a file per concern: protocol,
// faults, robustness, models, jobs, resume.
mod federation;

// Seeded runs of every model and job kind, compared bit for bit with recorded fixtures.
mod golden;

// Real processes: `serve`, `shoal-client`, `job ...`, `partition`, and CLI error handling.
mod processes;

// Deployment files: Kubernetes manifests and the compose federation.
mod deploy;

// Hostile peers and credentials: TLS, mutual TLS, tokens, admin separation, bad messages.
mod security;

// The fuzz targets' corpora, replayed through the same decoders on stable Rust.
mod fuzz_replay;

// The protocol's conformance suite (`shoal-conformance`, tests/conformance/) against the Rust
// clients: the `shoal-client` binary and the Trainer API's example. pytest runs it against the
// Python SDK.
mod conformance;
