//! `lotus events tail|publish|query`.

use std::time::SystemTime;

use anyhow::{Context as _, Result};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use lotus_bus::{StreamName, StreamQuery};
use lotus_core::{Event, Pattern, Topic};
use lotus_server::PublishResponse;
use serde_json::{Value, json};

use crate::cli::EventsCmd;
use crate::client::Client;
use crate::config::Config;
use crate::exit::{CliError, ExitCode, bad_input};
use crate::home::Home;

fn line(ev: &Event) -> String {
    format!(
        "{}  {}  {}  {}",
        humantime::format_rfc3339_micros(ev.time),
        ev.topic,
        ev.source,
        ev.payload
    )
}

fn parse_time(s: &str, flag: &str) -> Result<SystemTime> {
    lotus_core::event::parse_time_or_ago(s).ok_or_else(|| {
        bad_input(format!(
            "--{flag} {s}: expected a duration ago such as `10m` or an RFC 3339 time"
        ))
    })
}

pub async fn run(home: &Home, config: &Config, cmd: EventsCmd) -> Result<()> {
    match cmd {
        EventsCmd::Tail {
            pattern,
            count,
            json,
        } => {
            let pattern = pattern.unwrap_or_else(|| ">".into());
            for p in pattern.split(',') {
                Pattern::new(p.trim()).map_err(|e| bad_input(format!("invalid pattern: {e}")))?;
            }
            let client = Client::new(home, config)?;
            let resp = client.stream(&pattern).await?;
            let mut events = resp.bytes_stream().eventsource();
            let mut seen = 0u64;
            while count.is_none_or(|n| seen < n) {
                let Some(item) = events.next().await else {
                    return Err(CliError::new(
                        ExitCode::NotRunning,
                        "the nucleus closed the event stream (it is stopping)",
                    )
                    .into());
                };
                let item = item.context("the event stream broke")?;
                if item.event == "lagged" {
                    eprintln!(
                        "warning: this terminal fell behind; the nucleus skipped events: {}",
                        item.data
                    );
                    continue;
                }
                let ev: Event = serde_json::from_str(&item.data)
                    .context("the nucleus sent an event that is not valid")?;
                if json {
                    println!("{}", serde_json::to_string(&ev)?);
                } else {
                    println!("{}", line(&ev));
                }
                seen += 1;
            }
        }
        EventsCmd::Publish { topic, payload } => {
            Topic::new(&topic).map_err(|e| bad_input(format!("invalid topic: {e}")))?;
            let payload: Value = match payload.as_deref() {
                None => Value::Null,
                Some(text) => serde_json::from_str(text).map_err(|e| {
                    bad_input(format!(
                        "the payload is not valid JSON ({e}); e.g. '{{\"text\":\"hi\"}}'"
                    ))
                })?,
            };
            let client = Client::new(home, config)?;
            let r: PublishResponse = client
                .post(
                    "/api/v1/events",
                    &json!({"topic": topic, "payload": payload}),
                )
                .await?;
            println!(
                "published {} on {topic} to {} subscriber(s)",
                r.id, r.matched
            );
        }
        EventsCmd::Query {
            stream,
            since,
            until,
            topic,
            limit,
            newest_first,
            json,
        } => {
            let name: StreamName = stream
                .parse()
                .map_err(|e: lotus_bus::LogError| bad_input(e.to_string()))?;
            let mut q = StreamQuery::new(name);
            q.since = since
                .as_deref()
                .map(|s| parse_time(s, "since"))
                .transpose()?;
            q.until = until
                .as_deref()
                .map(|s| parse_time(s, "until"))
                .transpose()?;
            q.topic = topic
                .as_deref()
                .map(|t| Pattern::new(t).map_err(|e| bad_input(format!("invalid --topic: {e}"))))
                .transpose()?;
            q.limit = limit;
            q.newest_first = newest_first;
            let path = home.streams_db();
            if config.bus.backend == crate::config::BusBackend::Memory && !path.exists() {
                return Err(CliError::new(
                    ExitCode::NotFound,
                    format!(
                        "no durable streams in {} yet; they appear once `lotus up` has run",
                        home.root().display()
                    ),
                )
                .into());
            }
            let log = super::durable_log(home, config).await?;
            let rows = log.query(q).await?;
            for r in &rows {
                if json {
                    println!("{}", serde_json::to_string(r)?);
                } else {
                    println!("{:>8}  {}", r.seq, line(&r.event));
                }
            }
            if rows.is_empty() && !json {
                eprintln!("no events in {name} match");
            }
        }
    }
    Ok(())
}
