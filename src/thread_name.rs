//! The thread-naming call std makes, without musl's snprintf.
//!
//! std names each thread it spawns (when the thread has a name) with
//! `pthread_setname_np(pthread_self(), name)`. musl's version takes `prctl(PR_SET_NAME)` for the calling
//! thread, but formats `/proc/self/task/<tid>/comm` with `snprintf` for any other, and that links all of
//! printf, its long-double float formatting included: 13 KB of the static aarch64 binary. This definition
//! takes the place of musl's in the static link (libc.a's member is then never pulled in), and names the
//! calling thread exactly as musl does. Other threads are refused: nothing here names one.
#![cfg(all(target_os = "linux", target_env = "musl"))]

/// # Safety
/// `name` is a NUL-terminated string, as for musl's own.
#[no_mangle]
unsafe extern "C" fn pthread_setname_np(
    thread: libc::pthread_t,
    name: *const libc::c_char,
) -> libc::c_int {
    if thread != libc::pthread_self() {
        return libc::ENOSYS;
    }
    // SAFETY: the caller passes a NUL-terminated string; at most 16 bytes of it are read.
    if unsafe { libc::strnlen(name, 16) } > 15 {
        return libc::ERANGE;
    }
    // SAFETY: PR_SET_NAME reads at most 16 bytes of a NUL-terminated string, which `name` is.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name as libc::c_ulong, 0, 0, 0) } != 0 {
        // SAFETY: errno is this thread's.
        return unsafe { *libc::__errno_location() };
    }
    0
}
