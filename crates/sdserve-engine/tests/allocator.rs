//! The process allocator (`sdserve_engine::alloc`) installed as the binary
//! installs it: weight tensors over a file's own pages and reuse of large
//! freed buffers, with what they must never do (share, leak, lose data).
//! One test function: the allocator's state is process-wide.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use sdserve_engine::alloc::{self, BlockReuse, EngineAllocator, MappedFile};
use sdserve_engine::loader::var_builder;

#[global_allocator]
static ALLOCATOR: EngineAllocator = EngineAllocator;

/// A safetensors file with the given (name, dtype, shape, little-endian bytes).
fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&json);
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn weights_map_without_copies_and_buffers_are_reused_within_a_job() {
    assert!(alloc::installed());
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("w.safetensors");
    let a: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..6).map(|i| -(i as f32)).collect();
    let h: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    write_safetensors(
        &path,
        &[
            ("a", "F32", vec![10, 100], f32_bytes(&a)),
            ("b", "F32", vec![2, 3], f32_bytes(&b)),
            ("h", "F16", vec![2], h),
        ],
    );

    // f32 at f32: the tensors are the mapping's pages (one live mapping);
    // the f16 tensor is converted. Values are the file's either way.
    let before = alloc::live_mappings();
    let (vb, _) = var_builder(std::slice::from_ref(&path), DType::F32, &Device::Cpu).unwrap();
    let ta = vb.get((10, 100), "a").unwrap();
    let tb = vb.get((2, 3), "b").unwrap();
    let th = vb.get(2, "h").unwrap();
    assert_eq!(alloc::live_mappings(), before + 1);
    assert_eq!(ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(), a);
    assert_eq!(tb.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b);
    assert_eq!(th.to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
    // A second request for the same tensor is a copy, never a shared buffer.
    let ta2 = vb.get((10, 100), "a").unwrap();
    assert_eq!(ta2.flatten_all().unwrap().to_vec1::<f32>().unwrap(), a);
    // Ops on mapped tensors behave as on any tensor.
    let sum = (&ta + &ta2)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(sum, a.iter().sum::<f32>() * 2.0);
    // The mapping outlives the VarBuilder while a tensor holds it, and goes with the last one.
    drop(vb);
    assert_eq!(alloc::live_mappings(), before + 1);
    drop((ta, ta2, th));
    assert_eq!(alloc::live_mappings(), before + 1);
    assert_eq!(tb.to_vec2::<f32>().unwrap()[1], vec![-3.0, -4.0, -5.0]);
    drop(tb);
    assert_eq!(alloc::live_mappings(), before);

    // A Vec over the mapping that grows moves to the heap and lets go of the file;
    // writing it never reaches the file (private mapping).
    let file = std::fs::File::open(&path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let map = MappedFile::open(&file, len).unwrap();
    let data_start = len - (1000 + 6) * 4 - 4;
    let mut v = unsafe { map.adopt::<f32>(data_start, 1000) }.unwrap();
    assert_eq!(v, a);
    v[0] = 42.0;
    v.push(7.0);
    assert_eq!((v[0], v[1000], v.len()), (42.0, 7.0, 1001));
    drop(map);
    assert_eq!(alloc::live_mappings(), before);
    drop(v);
    let (vb, _) = var_builder(std::slice::from_ref(&path), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        vb.get((10, 100), "a")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0],
        0.0
    );
    drop(vb);
    // Misaligned or out-of-range stretches are refused (the caller copies).
    let map = MappedFile::open(&file, len).unwrap();
    assert!(unsafe { map.adopt::<f32>(data_start + 1, 10) }.is_none());
    assert!(unsafe { map.adopt::<f32>(data_start, 2000) }.is_none());
    drop(map);
    assert_eq!(alloc::live_mappings(), before);

    // Buffer reuse: within a scope a freed 4 MiB buffer serves the next one
    // of its size (same address, no fresh pages), kept bytes never take the
    // total past the most the scope has held, and the scope's end releases all.
    {
        let _reuse = BlockReuse::begin();
        let first: Vec<f32> = vec![1.0; 1 << 20];
        let addr = first.as_ptr() as usize;
        drop(first);
        assert!(alloc::cached_bytes() >= 4 << 20);
        // A zeroed request gets zeroes even from the dirty block.
        let again: Vec<f32> = vec![0.0; 1 << 20];
        assert_eq!(again.as_ptr() as usize, addr);
        assert!(again.iter().all(|&x| x == 0.0));
        assert_eq!(alloc::cached_bytes(), 0);
        drop(again);
        assert!(alloc::cached_bytes() >= 4 << 20);
        // A new high (16 MiB, more than was ever held) evicts what was kept.
        let big = vec![1u8; 16 << 20];
        assert_eq!(alloc::cached_bytes(), 0);
        drop(big);
        assert!(alloc::cached_bytes() >= 16 << 20);
    }
    assert_eq!(alloc::cached_bytes(), 0);
}
