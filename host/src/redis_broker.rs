//! An in-process stand-in for a Redis server, so `bazaar up` runs the Redis
//! trigger on a fresh machine with nothing installed.
//!
//! It is reached through the address [`EMBEDDED_ADDRESS`]: a `redis://` URL
//! whose host is under `.invalid`, a name that by RFC 6761 never resolves, so
//! a real Spin given this address fails loudly instead of reaching some
//! unexpected server. It keeps Redis pub/sub semantics (a message reaches the
//! subscribers of the moment; nobody listening means it is dropped) and the
//! key commands the `spin:redis` interface offers. It is for local runs: its
//! data lives in memory, dies with the process, and is not shared between
//! processes.

use redis::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

pub const EMBEDDED_ADDRESS: &str = "redis://embedded.bazaar.invalid";
pub const EMBEDDED_HOST: &str = "embedded.bazaar.invalid";

/// Whether `address` names the embedded broker.
pub fn is_embedded(address: &str) -> bool {
    url::Url::parse(address).is_ok_and(|u| u.host_str() == Some(EMBEDDED_HOST))
}

/// Messages a slow subscriber may fall behind by before it misses some (a
/// real server disconnects such a client; here it is told how many it lost).
pub const SUBSCRIBER_BUFFER: usize = 4096;

#[derive(Default)]
pub struct EmbeddedBroker {
    channels: Mutex<HashMap<String, broadcast::Sender<Vec<u8>>>>,
    data: Mutex<HashMap<Vec<u8>, Entry>>,
    /// When keys given a time to live (`EXPIRE`) are deleted: on the next
    /// command that names them, and at every `EXPIRE`, all that are due.
    expiry: Mutex<HashMap<Vec<u8>, Instant>>,
}

enum Entry {
    String(Vec<u8>),
    Set(BTreeSet<Vec<u8>>),
}

/// A command failure, worded as Redis words it.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandError(pub String);

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

impl EmbeddedBroker {
    pub fn subscribe(&self, channel: &str) -> broadcast::Receiver<Vec<u8>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(channel.to_string())
            .or_insert_with(|| broadcast::channel(SUBSCRIBER_BUFFER).0)
            .subscribe()
    }

    /// Delivers to the current subscribers; returns how many there were.
    pub fn publish(&self, channel: &str, payload: Vec<u8>) -> i64 {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        match channels.get(channel) {
            Some(sender) => sender.send(payload).map(|n| n as i64).unwrap_or(0),
            None => 0,
        }
    }

    /// Runs one command with Redis's reply types.
    pub fn execute(&self, command: &str, args: Vec<Vec<u8>>) -> Result<Value, CommandError> {
        let name = command.to_ascii_uppercase();
        let arity_error = || {
            CommandError(format!(
                "ERR wrong number of arguments for '{command}' command"
            ))
        };
        let mut data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let mut expiry = self.expiry.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for key in &args {
            if expiry.get(key).is_some_and(|at| *at <= now) {
                expiry.remove(key);
                data.remove(key);
            }
        }
        match (name.as_str(), args.as_slice()) {
            ("PING", []) => Ok(Value::SimpleString("PONG".into())),
            ("PUBLISH", [channel, payload]) => {
                drop(data);
                let channel = String::from_utf8_lossy(channel);
                Ok(Value::Int(self.publish(&channel, payload.clone())))
            }
            ("GET", [key]) => match data.get(key) {
                None => Ok(Value::Nil),
                Some(Entry::String(v)) => Ok(Value::BulkString(v.clone())),
                Some(Entry::Set(_)) => Err(CommandError(WRONGTYPE.into())),
            },
            ("SET", [key, value]) => {
                expiry.remove(key);
                data.insert(key.clone(), Entry::String(value.clone()));
                Ok(Value::Okay)
            }
            ("EXPIRE", [key, seconds]) => {
                let seconds = parse_int(seconds)?;
                // Every key past its time goes now, not only those named
                // again, so keys nobody touches again do not pile up.
                let due: Vec<Vec<u8>> = expiry
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in due {
                    expiry.remove(&k);
                    data.remove(&k);
                }
                if !data.contains_key(key) {
                    return Ok(Value::Int(0));
                }
                if seconds <= 0 {
                    data.remove(key);
                    expiry.remove(key);
                } else {
                    expiry.insert(key.clone(), now + Duration::from_secs(seconds as u64));
                }
                Ok(Value::Int(1))
            }
            ("TTL", [key]) => Ok(Value::Int(
                match (data.contains_key(key), expiry.get(key)) {
                    (false, _) => -2,
                    (true, None) => -1,
                    (true, Some(at)) => {
                        at.saturating_duration_since(now).as_secs_f64().ceil() as i64
                    }
                },
            )),
            ("INCR", [key]) => incr_by(&mut data, key, 1),
            ("INCRBY", [key, by]) => {
                let by = parse_int(by)?;
                incr_by(&mut data, key, by)
            }
            ("DEL", keys) if !keys.is_empty() => Ok(Value::Int(
                keys.iter()
                    .filter(|k| {
                        expiry.remove(*k);
                        data.remove(*k).is_some()
                    })
                    .count() as i64,
            )),
            ("EXISTS", keys) if !keys.is_empty() => Ok(Value::Int(
                keys.iter().filter(|k| data.contains_key(*k)).count() as i64,
            )),
            ("SADD", [key, members @ ..]) if !members.is_empty() => {
                let set = match data
                    .entry(key.clone())
                    .or_insert_with(|| Entry::Set(BTreeSet::new()))
                {
                    Entry::Set(set) => set,
                    Entry::String(_) => return Err(CommandError(WRONGTYPE.into())),
                };
                Ok(Value::Int(
                    members.iter().filter(|m| set.insert(m.to_vec())).count() as i64,
                ))
            }
            ("SREM", [key, members @ ..]) if !members.is_empty() => match data.get_mut(key) {
                None => Ok(Value::Int(0)),
                Some(Entry::Set(set)) => {
                    let removed = members.iter().filter(|m| set.remove(*m)).count() as i64;
                    if set.is_empty() {
                        data.remove(key);
                    }
                    Ok(Value::Int(removed))
                }
                Some(Entry::String(_)) => Err(CommandError(WRONGTYPE.into())),
            },
            ("SMEMBERS", [key]) => match data.get(key) {
                None => Ok(Value::Array(Vec::new())),
                Some(Entry::Set(set)) => Ok(Value::Array(
                    set.iter().cloned().map(Value::BulkString).collect(),
                )),
                Some(Entry::String(_)) => Err(CommandError(WRONGTYPE.into())),
            },
            (
                "PING" | "PUBLISH" | "GET" | "SET" | "EXPIRE" | "TTL" | "INCR" | "INCRBY" | "DEL"
                | "EXISTS" | "SADD" | "SREM" | "SMEMBERS",
                _,
            ) => Err(arity_error()),
            _ => Err(CommandError(format!(
                "ERR unknown command '{command}': the embedded broker supports PING, PUBLISH, GET, SET, EXPIRE, TTL, INCR, INCRBY, DEL, EXISTS, SADD, SREM and SMEMBERS; use a real Redis (--redis redis://...) for more"
            ))),
        }
    }
}

fn parse_int(bytes: &[u8]) -> Result<i64, CommandError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CommandError("ERR value is not an integer or out of range".into()))
}

fn incr_by(data: &mut HashMap<Vec<u8>, Entry>, key: &[u8], by: i64) -> Result<Value, CommandError> {
    let current = match data.get(key) {
        None => 0,
        Some(Entry::String(v)) => parse_int(v)?,
        Some(Entry::Set(_)) => return Err(CommandError(WRONGTYPE.into())),
    };
    let next = current
        .checked_add(by)
        .ok_or_else(|| CommandError("ERR increment or decrement would overflow".into()))?;
    data.insert(key.to_vec(), Entry::String(next.to_string().into_bytes()));
    Ok(Value::Int(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(b: &EmbeddedBroker, cmd: &str, args: &[&str]) -> Result<Value, CommandError> {
        b.execute(cmd, args.iter().map(|a| a.as_bytes().to_vec()).collect())
    }

    #[test]
    fn strings_and_counters() {
        let b = EmbeddedBroker::default();
        assert_eq!(run(&b, "get", &["k"]), Ok(Value::Nil));
        assert_eq!(run(&b, "SET", &["k", "v"]), Ok(Value::Okay));
        assert_eq!(run(&b, "GET", &["k"]), Ok(Value::BulkString(b"v".to_vec())));
        assert_eq!(run(&b, "INCR", &["n"]), Ok(Value::Int(1)));
        assert_eq!(run(&b, "INCRBY", &["n", "41"]), Ok(Value::Int(42)));
        assert!(
            run(&b, "INCR", &["k"])
                .unwrap_err()
                .0
                .contains("not an integer")
        );
        assert_eq!(run(&b, "DEL", &["k", "n", "missing"]), Ok(Value::Int(2)));
    }

    #[test]
    fn keys_expire_as_told() {
        let b = EmbeddedBroker::default();
        assert_eq!(run(&b, "EXPIRE", &["n", "10"]), Ok(Value::Int(0)));
        assert_eq!(run(&b, "INCR", &["n"]), Ok(Value::Int(1)));
        assert_eq!(run(&b, "TTL", &["n"]), Ok(Value::Int(-1)));
        assert_eq!(run(&b, "EXPIRE", &["n", "10"]), Ok(Value::Int(1)));
        assert_eq!(run(&b, "TTL", &["n"]), Ok(Value::Int(10)));
        // INCR keeps the time to live, SET drops it.
        assert_eq!(run(&b, "INCR", &["n"]), Ok(Value::Int(2)));
        assert_eq!(run(&b, "TTL", &["n"]), Ok(Value::Int(10)));
        assert_eq!(run(&b, "SET", &["n", "5"]), Ok(Value::Okay));
        assert_eq!(run(&b, "TTL", &["n"]), Ok(Value::Int(-1)));
        // A time to live of 0 deletes the key, as in Redis.
        assert_eq!(run(&b, "EXPIRE", &["n", "0"]), Ok(Value::Int(1)));
        assert_eq!(run(&b, "TTL", &["n"]), Ok(Value::Int(-2)));
        assert_eq!(run(&b, "GET", &["n"]), Ok(Value::Nil));
        // Past its time, a key is gone for every command.
        run(&b, "INCR", &["m"]).unwrap();
        b.expiry
            .lock()
            .unwrap()
            .insert(b"m".to_vec(), Instant::now() - Duration::from_millis(1));
        assert_eq!(run(&b, "EXISTS", &["m"]), Ok(Value::Int(0)));
        assert!(b.data.lock().unwrap().is_empty());
    }

    #[test]
    fn sets_and_wrong_types() {
        let b = EmbeddedBroker::default();
        assert_eq!(run(&b, "SADD", &["s", "a", "b", "a"]), Ok(Value::Int(2)));
        assert_eq!(
            run(&b, "SMEMBERS", &["s"]),
            Ok(Value::Array(vec![
                Value::BulkString(b"a".to_vec()),
                Value::BulkString(b"b".to_vec())
            ]))
        );
        assert_eq!(run(&b, "SREM", &["s", "a", "z"]), Ok(Value::Int(1)));
        assert!(
            run(&b, "GET", &["s"])
                .unwrap_err()
                .0
                .starts_with("WRONGTYPE")
        );
        assert!(
            run(&b, "HSET", &["h", "f", "v"])
                .unwrap_err()
                .0
                .contains("unknown command")
        );
        assert!(
            run(&b, "GET", &[])
                .unwrap_err()
                .0
                .contains("wrong number of arguments")
        );
    }

    #[test]
    fn publish_reaches_current_subscribers_only() {
        let b = EmbeddedBroker::default();
        assert_eq!(b.publish("c", b"lost".to_vec()), 0);
        let mut one = b.subscribe("c");
        let mut two = b.subscribe("c");
        assert_eq!(run(&b, "PUBLISH", &["c", "hi"]), Ok(Value::Int(2)));
        assert_eq!(one.try_recv().unwrap(), b"hi");
        assert_eq!(two.try_recv().unwrap(), b"hi");
    }
}
