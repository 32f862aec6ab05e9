//! Operating-system helpers for load generation (`herald bench`): raising the open-file limit,
//! TCP connects bound to a chosen source address (so that tens of thousands of loopback
//! connections are not limited by one address's ephemeral port range), and the clock-tick
//! rate needed to read CPU times from `/proc`. Linux-oriented; elsewhere the functions fall
//! back to harmless defaults.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the resulting
/// `(soft, hard)` limits.
#[cfg(unix)]
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the rlimit struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if rl.rlim_cur < rl.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: setrlimit only reads the rlimit struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            rl = raised;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux but not on every unix
    Ok((rl.rlim_cur as u64, rl.rlim_max as u64))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (no-op on this platform).
#[cfg(not(unix))]
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    Ok((u64::MAX, u64::MAX))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of the CPU times in
/// `/proc/<pid>/stat`; 100 if unknown.
pub fn clock_ticks_per_second() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            return t as u64;
        }
    }
    100
}

/// Connects a TCP stream to `dst`, with Nagle's algorithm disabled. With `src`, the socket is
/// bound to that source address first; on Linux the port is then chosen at connect time
/// (`IP_BIND_ADDRESS_NO_PORT`), so ports only need to be unique per (source, destination)
/// pair. No timeout of its own: wrap it in one.
pub async fn tcp_connect(dst: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = src {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd as _;
            let one: libc::c_int = 1;
            // SAFETY: a valid socket fd and a pointer/length pair describing a c_int.
            // Failure only means the port is chosen at bind time, which is still correct.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
