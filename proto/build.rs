//! Compiles `shoal/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates tonic code
//! into `OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "shoal/v1/common.proto",
        "shoal/v1/federation.proto",
        "shoal/v1/jobs.proto",
        "shoal/v1/trees.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // No generated `connect(dst)` constructors: they would clash with the `Connect` rpc, and
    // callers build channels themselves (timeouts, keep-alive).
    tonic_prost_build::configure()
        .build_transport(false)
        // Tensor bytes as `Bytes`: the same global model goes into every client's task, and a
        // clone of `Bytes` shares the buffer instead of copying the model N times.
        .bytes(".shoal.v1.Tensor.data")
        .bytes(".shoal.v1.Task.feature_view")
        // Chunks are slices of one shared buffer on the way out and pieces of one on the way in.
        .bytes(".shoal.v1.Chunk.data")
        .compile_fds(fds)?;
    Ok(())
}
