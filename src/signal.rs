//! SIGTERM and SIGINT set a flag and write a byte to a pipe whose read end is in the main loop's `poll`.
//!
//! A flag alone was seen only when `poll` returned EINTR: a signal that landed while the loop was busy
//! elsewhere (an engine request, a name lookup, a collection) had its EINTR taken by that other call, and
//! the loop then slept until its next deadline (up to the whole interval). The pipe stays readable until
//! drained, so the next `poll` returns at once whenever the signal came. Both ends are O_NONBLOCK (a full
//! pipe must not block the handler; it already holds a wake-up) and O_CLOEXEC (CLI children must not
//! inherit them).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
/// The pipe's ends, -1 until `install` made them.
static READ_FD: AtomicI32 = AtomicI32::new(-1);
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store and write(2): both are async-signal-safe. errno is saved, as the interrupted
    // code may be about to read it.
    STOP.store(true, Ordering::SeqCst);
    let fd = WRITE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: errno location and write(2) on our own descriptor, a one-byte buffer on the stack.
        unsafe {
            let errno = *libc::__errno_location();
            let _ = libc::write(fd, [1u8].as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

pub fn install() {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 fills the two-int array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } == 0 {
        READ_FD.store(fds[0], Ordering::SeqCst);
        WRITE_FD.store(fds[1], Ordering::SeqCst);
    } else {
        // Without the pipe a stop is still seen at EINTR or at the next deadline, as before.
        crate::warn!(
            "cannot create the signal pipe: {}; a stop may wait for the next tick",
            std::io::Error::last_os_error()
        );
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The descriptor to poll for input: readable once a stop was requested. -1 (ignored by `poll`) when
/// there is no pipe.
pub fn wake_fd() -> libc::c_int {
    READ_FD.load(Ordering::SeqCst)
}

/// Empties the pipe, so that a loop that goes on after a stop (the final flush) does not spin on it.
pub fn drain() {
    let fd = wake_fd();
    let mut buf = [0u8; 64];
    // SAFETY: read(2) into a stack buffer of the length given, on our own non-blocking descriptor.
    while fd >= 0 && unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_makes_the_pipe_readable_until_drained() {
        install();
        let fd = wake_fd();
        assert!(fd >= 0);
        let readable = || {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        assert!(!readable());
        // SAFETY: raise(3) a signal whose handler we just installed; it only sets a flag and writes.
        unsafe { libc::raise(libc::SIGINT) };
        assert!(stop_requested());
        assert!(readable());
        assert!(readable(), "stays readable until drained");
        drain();
        assert!(!readable());
        STOP.store(false, Ordering::SeqCst);
    }
}
