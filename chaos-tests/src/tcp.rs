//! This machine's IPv4 TCP sockets as the kernel lists them in `/proc/net/tcp`: enough to tell
//! whether bytes are still on their way between two local processes (sent and not yet
//! acknowledged, or received and not yet read).

/// One socket of `/proc/net/tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    pub local_port: u16,
    pub remote_port: u16,
    /// The kernel's state number (`0x01` ESTABLISHED, `0x0A` LISTEN, …).
    pub state: u8,
    /// Bytes sent and not yet acknowledged by the peer.
    pub tx_queue: u64,
    /// Bytes received and not yet read by the process (for a listener: connections waiting to be
    /// accepted).
    pub rx_queue: u64,
}

/// Every IPv4 TCP socket of this network namespace.
pub fn sockets() -> anyhow::Result<Vec<Socket>> {
    Ok(parse(&std::fs::read_to_string("/proc/net/tcp")?))
}

/// Bytes on their way over the established connections to or from local `port`, either way.
pub fn bytes_in_flight(port: u16) -> anyhow::Result<u64> {
    Ok(sockets()?
        .iter()
        .filter(|s| s.state == 0x01 && (s.local_port == port || s.remote_port == port))
        .map(|s| s.tx_queue + s.rx_queue)
        .sum())
}

fn parse(table: &str) -> Vec<Socket> {
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = f.get(4)?.split_once(':')?;
            Some(Socket {
                local_port: port(f.get(1)?)?,
                remote_port: port(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ports_states_and_queues() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:1F90 01 00010000:00000000 01:00000014 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(
            parse(table),
            [
                Socket {
                    local_port: 8080,
                    remote_port: 0,
                    state: 0x0A,
                    tx_queue: 0,
                    rx_queue: 2
                },
                Socket {
                    local_port: 50000,
                    remote_port: 8080,
                    state: 0x01,
                    tx_queue: 65536,
                    rx_queue: 0
                },
            ]
        );
    }
}
