//! What travels over the broker's TCP socket: MQTT bytes as they are, or inside TLS.
//!
//! The agent's loop owns the socket and calls these with it; with TLS, `mqtt::tls` turns plaintext into
//! records and back. Both read and write without blocking, so the loop keeps its one `poll`.

#[cfg(feature = "tls")]
use crate::mqtt::tls;
use std::io::{self, Read, Write};

/// The TLS settings every connection uses, checked at start (see `load`).
#[cfg(feature = "tls")]
pub use tls::Client as TlsClient;

/// Without the `tls` feature there is nothing to hold: `mqtts://` is a config error then.
#[cfg(not(feature = "tls"))]
#[derive(Debug)]
pub enum TlsClient {}

/// Reads and checks the certificates of an `mqtts://` config; an error names the key, for exit code 2.
pub fn load(
    mqtt: &crate::config::Mqtt,
    config_path: &str,
) -> Result<Option<TlsClient>, crate::config::ConfigError> {
    #[cfg(feature = "tls")]
    if let Some(t) = &mqtt.tls {
        return tls::client(t, config_path, &tls::read_file).map(Some);
    }
    let _ = (mqtt, config_path);
    Ok(None)
}

pub enum Transport {
    /// MQTT as it is. `heard`: the broker has sent something (its first bytes tell a TLS port).
    Plain { heard: bool },
    #[cfg(feature = "tls")]
    Tls(Box<tls::Conn>),
}

impl Transport {
    /// The transport for a new connection to broker address `broker`: TLS when the config says
    /// `mqtts://`.
    pub fn new(tls: Option<&TlsClient>, broker: usize) -> io::Result<Transport> {
        let _ = broker;
        match tls {
            #[cfg(feature = "tls")]
            Some(client) => Ok(Transport::Tls(Box::new(tls::Conn::new(client, broker)?))),
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
            None => Ok(Transport::Plain { heard: false }),
        }
    }

    /// Sends some of `data` (MQTT bytes); how many were taken, or WouldBlock when none.
    pub fn send<S: Read + Write>(&mut self, socket: &mut S, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain { .. } => socket.write(data),
            #[cfg(feature = "tls")]
            Transport::Tls(c) => {
                let mut n = c.write_plain(data);
                // Records out first when the bounded buffer is full, then try again.
                let flushed = c.flush(socket)?;
                if n == 0 && flushed {
                    n = c.write_plain(data);
                    c.flush(socket)?;
                }
                if n == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            }
        }
    }

    /// Writes what the transport itself still holds (TLS records); true when nothing is left.
    pub fn flush<S: Read + Write>(&mut self, socket: &mut S) -> io::Result<bool> {
        match self {
            Transport::Plain { .. } => {
                let _ = socket;
                Ok(true)
            }
            #[cfg(feature = "tls")]
            Transport::Tls(c) => c.flush(socket),
        }
    }

    /// Whether to wait for the socket to turn writable, given whether MQTT bytes are waiting. During a
    /// TLS handshake, waiting bytes cannot move until the broker answers: waking for them would spin.
    pub fn wants_writable(&self, mqtt_waiting: bool) -> bool {
        match self {
            Transport::Plain { .. } => mqtt_waiting,
            #[cfg(feature = "tls")]
            Transport::Tls(c) => c.wants_write() || (mqtt_waiting && !c.is_handshaking()),
        }
    }

    /// Whether to wait for input even when MQTT expects none (a TLS handshake in progress).
    pub fn wants_readable(&self) -> bool {
        match self {
            Transport::Plain { .. } => false,
            #[cfg(feature = "tls")]
            Transport::Tls(c) => c.is_handshaking(),
        }
    }

    /// MQTT bytes from the broker: Ok(0) when it closed, WouldBlock when nothing more has arrived.
    pub fn recv<S: Read + Write>(&mut self, socket: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain { heard } => {
                let n = match socket.read(buf) {
                    Ok(0) if !*heard => return Err(no_answer("closed")),
                    Err(e) if !*heard && e.kind() == io::ErrorKind::ConnectionReset => {
                        return Err(no_answer("reset"))
                    }
                    r => r?,
                };
                // A TLS record (alert 0x15 or handshake 0x16, version 3.x) where MQTT should be.
                if !*heard && n >= 2 && matches!(buf[0], 0x15 | 0x16) && buf[1] == 0x03 {
                    return Err(io::Error::other(
                        "the broker answered with TLS: this is an MQTT-over-TLS port, use mqtts:// \
                         for it",
                    ));
                }
                *heard |= n > 0;
                Ok(n)
            }
            #[cfg(feature = "tls")]
            Transport::Tls(c) => c.read(socket, buf),
        }
    }

    /// For the log: " over TLS 1.3, <cipher suite>", or nothing for plain MQTT.
    pub fn describe(&self) -> String {
        match self {
            Transport::Plain { .. } => String::new(),
            #[cfg(feature = "tls")]
            Transport::Tls(c) => format!(" over {}", c.describe()),
        }
    }

    /// Queues the TLS close_notify, which `flush` sends; nothing to do for plain MQTT.
    pub fn close(&mut self) {
        #[cfg(feature = "tls")]
        if let Transport::Tls(c) = self {
            c.close();
        }
    }
}

/// A plain connection the broker ended before saying anything: what a TLS listener does with our CONNECT.
fn no_answer(how: &str) -> io::Error {
    io::Error::other(format!(
        "the broker {how} the connection without an answer (if this is an MQTT-over-TLS port, use \
         mqtts:// for it)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket over memory: reads from `input`, writes to `output`.
    struct Pipe {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_passes_bytes_through_and_tells_a_tls_answer() {
        let mut t = Transport::new(None, 0).unwrap();
        let mut p = Pipe {
            input: io::Cursor::new(vec![0x20, 0x02, 0x00, 0x00]),
            output: Vec::new(),
        };
        assert_eq!(t.send(&mut p, b"abc").unwrap(), 3);
        assert_eq!(p.output, b"abc");
        let mut buf = [0u8; 8];
        assert_eq!(t.recv(&mut p, &mut buf).unwrap(), 4);
        assert!(!t.wants_writable(false) && t.wants_writable(true) && !t.wants_readable());

        let mut t = Transport::new(None, 0).unwrap();
        // What a TLS listener sends to bytes it cannot read: an alert record.
        let mut p = Pipe {
            input: io::Cursor::new(vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]),
            output: Vec::new(),
        };
        let e = t.recv(&mut p, &mut buf).unwrap_err();
        assert!(e.to_string().contains("use mqtts://"), "{e}");

        // Closed before a word: possibly a TLS port; after an answer, a plain close.
        let mut p = Pipe {
            input: io::Cursor::new(Vec::new()),
            output: Vec::new(),
        };
        let e = Transport::new(None, 0)
            .unwrap()
            .recv(&mut p, &mut buf)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("closed the connection without an answer"),
            "{e}"
        );
        let mut t = Transport::Plain { heard: true };
        assert_eq!(t.recv(&mut p, &mut buf).unwrap(), 0);
    }
}
