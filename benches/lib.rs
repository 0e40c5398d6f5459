//! Home of alagg's criterion benchmarks (`cargo bench -p alagg-benches`); see the `[[bench]]`
//! targets in this crate's `Cargo.toml`.
