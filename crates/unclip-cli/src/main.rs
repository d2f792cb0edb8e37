fn main() -> std::process::ExitCode {
    keep_freed_memory();
    unclip_cli::main_with_args(std::env::args_os())
}

/// A training step allocates and frees hundreds of activation-sized buffers. glibc serves
/// large ones with fresh `mmap`s and unmaps them on free, so every step faults in (and the
/// kernel zeroes) the same gigabytes again: ≈ 12 % of the decoder benchmark's CPU time. Serving
/// every allocation from the heap and never trimming it reuses the memory instead; the peak
/// is unchanged.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
