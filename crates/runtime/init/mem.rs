//! The memory functions the compiler's code calls, which a C library would provide. Plain
//! loops: the crate is `no_builtins`, so the compiler does not turn them back into calls to
//! themselves, and nothing here moves more than a few KiB.

/// # Safety
/// As C's `memcpy`: `n` bytes readable at `src`, writable at `dest`, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller vouches for `n` bytes at each.
        unsafe { *dest.add(i) = *src.add(i) };
    }
    dest
}

/// # Safety
/// As C's `memmove`: `n` bytes readable at `src`, writable at `dest`; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) < (src as usize) {
        for i in 0..n {
            // SAFETY: as above; forwards, so a byte is read before it is overwritten.
            unsafe { *dest.add(i) = *src.add(i) };
        }
    } else {
        for i in (0..n).rev() {
            // SAFETY: as above; backwards, for the same reason.
            unsafe { *dest.add(i) = *src.add(i) };
        }
    }
    dest
}

/// # Safety
/// As C's `memset`: `n` bytes writable at `dest`.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller vouches for `n` bytes.
        unsafe { *dest.add(i) = c as u8 };
    }
    dest
}

/// # Safety
/// As C's `memcmp`: `n` bytes readable at each.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller vouches for `n` bytes at each.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

/// # Safety
/// As C's `bcmp`: `n` bytes readable at each.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// As C's `strlen`: `s` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: every byte up to the NUL may be read.
    while unsafe { *s.add(n) } != 0 {
        n += 1;
    }
    n
}

/// Named by the precompiled `core`'s unwind tables; never called, as this program aborts on
/// a panic instead of unwinding.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
