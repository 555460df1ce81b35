//! rumqttc publishing a burst of QoS 1 messages: the reference the agent's `--once` is held to (issue 18,
//! tests/bench/qos1.py).
//!
//! `rumqttc-qos1 --port PORT --messages FILE [--host 127.0.0.1] [--inflight 2048] [--cap N]`
//!
//! FILE holds one `topic<TAB>payload` a line: what the agent publishes for the same stats, captured by the
//! bench, so both sides send the same bytes. All of it is read before connecting. Once the CONNACK is in,
//! `connected` goes to stderr (the bench times both programs from that line to their exit), every message
//! is published at QoS 1, and after the last PUBACK a DISCONNECT is sent and one JSON line goes to stdout
//! with rumqttc's own clock: CONNACK to last PUBACK, and first PUBLISH out to last PUBACK.
//!
//! rumqttc as an application would use it: its defaults (no TCP_NODELAY on its socket, one flush per
//! request) except the in-flight window, which is the agent's, and the request channel, as deep as the
//! window so the publishing task never waits on the event loop for less than a window's room. One thread
//! (tokio's current-thread runtime), like the agent.

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
use std::time::Instant;

struct Args {
    host: String,
    port: u16,
    messages: String,
    inflight: u16,
    cap: Option<usize>,
}

const USAGE: &str =
    "usage: rumqttc-qos1 --port PORT --messages FILE [--host HOST] [--inflight N] [--cap N]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 0,
        messages: String::new(),
        inflight: 2048,
        cap: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} wants a value; {USAGE}"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--host" => args.host = value,
            "--port" => args.port = number(&value)?.try_into().map_err(|_| "--port too big")?,
            "--messages" => args.messages = value,
            "--inflight" => {
                args.inflight = number(&value)?
                    .try_into()
                    .map_err(|_| "--inflight too big")?
            }
            "--cap" => args.cap = Some(number(&value)? as usize),
            _ => return Err(format!("unknown flag {flag}; {USAGE}")),
        }
    }
    if args.port == 0 || args.messages.is_empty() || args.inflight == 0 {
        return Err(USAGE.into());
    }
    Ok(args)
}

fn load(path: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (topic, payload) = l
                .split_once('\t')
                .ok_or_else(|| format!("{path}: a line without a tab: {l}"))?;
            Ok((topic.to_string(), payload.as_bytes().to_vec()))
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("rumqttc-qos1: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    let messages = load(&args.messages)?;
    let n = messages.len();
    if n == 0 {
        return Err(format!("{}: no messages", args.messages));
    }
    let mut opts = MqttOptions::new(
        format!("rumqttc-qos1-{}", std::process::id()),
        args.host,
        args.port,
    );
    opts.set_inflight(args.inflight);
    let (client, mut eventloop) =
        AsyncClient::new(opts, args.cap.unwrap_or(args.inflight as usize));

    match eventloop
        .poll()
        .await
        .map_err(|e| format!("connect: {e}"))?
    {
        Event::Incoming(Incoming::ConnAck(_)) => {}
        other => return Err(format!("expected a CONNACK first, got {other:?}")),
    }
    let connack = Instant::now();
    eprintln!("connected");

    let publisher = client.clone();
    tokio::spawn(async move {
        for (topic, payload) in messages {
            if publisher
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
        }
    });

    let mut first_publish = None;
    let mut acked = 0;
    while acked < n {
        match eventloop
            .poll()
            .await
            .map_err(|e| format!("after {acked} of {n} PUBACKs: {e}"))?
        {
            Event::Outgoing(Outgoing::Publish(_)) if first_publish.is_none() => {
                first_publish = Some(Instant::now())
            }
            Event::Incoming(Incoming::PubAck(_)) => acked += 1,
            _ => {}
        }
    }
    let last_puback = Instant::now();

    // A clean goodbye, as the agent's --once ends; the figures above do not wait for it.
    client
        .disconnect()
        .await
        .map_err(|e| format!("disconnect: {e}"))?;
    while let Ok(event) = eventloop.poll().await {
        if event == Event::Outgoing(Outgoing::Disconnect) {
            break;
        }
    }

    let first = first_publish.unwrap_or(connack);
    println!(
        "{{\"messages\":{n},\"connack_to_last_puback_s\":{:.6},\"first_publish_to_last_puback_s\":{:.6}}}",
        (last_puback - connack).as_secs_f64(),
        (last_puback - first).as_secs_f64()
    );
    Ok(())
}
