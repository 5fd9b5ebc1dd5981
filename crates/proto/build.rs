//! Compiles every `.proto` file under `proto/` with protox (pure Rust: no `protoc` needed) and
//! generates prost messages plus tonic clients and servers. The encoded descriptor set is written to
//! `$OUT_DIR/sagaflow_descriptor.bin` for server reflection and for the servers'
//! enforcement of each RPC's class (`sagaflow.options.v1.rpc_class`).

use std::{env, fs, io, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = Vec::new();
    collect_protos(&proto_root, &mut files)?;
    files.sort();

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // The encoded set keeps the custom method options (`sagaflow.options.v1.rpc_class`), which
    // prost's `FileDescriptorSet` would drop: the servers enforce each RPC's class from it.
    fs::write(
        out_dir.join("sagaflow_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

fn collect_protos(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            out.push(path);
        }
    }
    Ok(())
}
