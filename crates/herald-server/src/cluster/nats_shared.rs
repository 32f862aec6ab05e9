//! Bans and API channels shared by every node over NATS: a [`Store`] that keeps them in a
//! JetStream key-value bucket (`<prefix>_shared`, keys `ban.<hex id>` and
//! `channel.<hex name>`, JSON records) as well as in the node's own store, and announces each
//! change on `<prefix>.ctl` so live nodes apply it at once.
//!
//! A node starting reads the bucket (records only its own store has, from before it joined,
//! are added to it). Without JetStream on the server (`nats-server -js`), changes are only
//! announced: live nodes get them, a node started later does not (said once at start).
//!
//! Store calls are synchronous and must not wait on the runtime, so a change is checked
//! (NATS connected, else the call fails and nothing changes), written to the node's store,
//! then queued to one writer task that updates the bucket and sends the notice in order.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use herald_core::Store;
use herald_core::bans::BanRecord;
use herald_core::history::HistoryOp;
use herald_core::store::{ChannelRecord, StoreError, StoredHistory};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::control::{Control, ControlRequest};

/// One change for the writer: the bucket key, the record (`None`: delete) and the notice.
struct Change {
    key: String,
    value: Option<Vec<u8>>,
    notice: Control,
}

pub struct NatsStore {
    local: Arc<dyn Store>,
    client: async_nats::Client,
    changes: mpsc::UnboundedSender<Change>,
    /// What the bucket held at start, handed out by the first loads.
    loaded: Mutex<Loaded>,
}

/// Channels and bans read at start, until loaded.
type Loaded = (Option<Vec<ChannelRecord>>, Option<Vec<BanRecord>>);

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The bucket's name: the prefix with characters buckets do not allow as `_`.
fn bucket_name(prefix: &str) -> String {
    let safe: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}_shared")
}

impl NatsStore {
    pub async fn open(
        local: Arc<dyn Store>,
        client: async_nats::Client,
        prefix: &str,
        control_subject: String,
        node: String,
        timeout: Duration,
    ) -> Result<NatsStore, StoreError> {
        let bucket = match tokio::time::timeout(timeout, open_bucket(&client, prefix)).await {
            Ok(Ok(bucket)) => Some(bucket),
            Ok(Err(e)) => {
                tracing::warn!(
                    error = %e,
                    "broker: no JetStream bucket (run nats-server with -js); bans and API \
                     channels reach the live nodes only"
                );
                None
            }
            Err(_) => {
                return Err(StoreError(format!(
                    "NATS: no answer about the shared bucket within {timeout:?}"
                )));
            }
        };
        let mut loaded = (None, None);
        if let Some(bucket) = &bucket {
            let (channels, bans) = load(bucket, timeout).await?;
            // Records from before this node joined go to the bucket too.
            let mut missing = Vec::new();
            for rec in local.load_channels()? {
                if !channels.iter().any(|c: &ChannelRecord| c.name == rec.name) {
                    missing.push((format!("channel.{}", hex(&rec.name)), json(&rec)?));
                }
            }
            for ban in local.load_bans()? {
                if !bans.iter().any(|b: &BanRecord| b.id() == ban.id()) {
                    missing.push((format!("ban.{}", hex(&ban.id())), json(&ban)?));
                }
            }
            for (key, value) in missing {
                put(bucket, &key, value, timeout).await?;
            }
            let mut channels = channels;
            let mut bans = bans;
            for rec in local.load_channels()? {
                if !channels.iter().any(|c| c.name == rec.name) {
                    channels.push(rec);
                }
            }
            for ban in local.load_bans()? {
                if !bans.iter().any(|b| b.id() == ban.id()) {
                    bans.push(ban);
                }
            }
            loaded = (Some(channels), Some(bans));
        }
        let (changes, queue) = mpsc::unbounded_channel();
        tokio::spawn(write(
            bucket,
            client.clone(),
            control_subject,
            node,
            timeout,
            queue,
        ));
        Ok(NatsStore {
            local,
            client,
            changes,
            loaded: Mutex::new(loaded),
        })
    }

    fn change(
        &self,
        key: String,
        value: Option<Vec<u8>>,
        notice: Control,
    ) -> Result<(), StoreError> {
        self.changes
            .send(Change { key, value, notice })
            .map_err(|_| StoreError("NATS: the shared store's writer stopped".into()))
    }

    fn connected(&self) -> Result<(), StoreError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(StoreError(
                "NATS is unavailable: bans and API channels cannot be shared now".into(),
            )),
        }
    }
}

/// The key-value bucket, created if missing. Its stream is made here with a key-value
/// bucket's settings (what `create_key_value` would ask for) because the client's own call
/// reads account details that servers before 2.10 do not give.
async fn open_bucket(
    client: &async_nats::Client,
    prefix: &str,
) -> Result<kv::Store, async_nats::Error> {
    use async_nats::jetstream::stream;
    let jetstream = async_nats::jetstream::new(client.clone());
    let bucket = bucket_name(prefix);
    jetstream
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("Herald: bans and API channels shared by the nodes".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await?;
    Ok(jetstream.get_key_value(bucket).await?)
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError(e.to_string()))
}

async fn put(
    bucket: &kv::Store,
    key: &str,
    value: Vec<u8>,
    timeout: Duration,
) -> Result<(), StoreError> {
    match tokio::time::timeout(timeout, bucket.put(key, value.into())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(StoreError(format!("NATS bucket: {e}"))),
        Err(_) => Err(StoreError(format!(
            "NATS bucket: no answer within {timeout:?}"
        ))),
    }
}

/// Every record in the bucket (bad ones are logged and skipped).
async fn load(
    bucket: &kv::Store,
    timeout: Duration,
) -> Result<(Vec<ChannelRecord>, Vec<BanRecord>), StoreError> {
    let failed = |e: &dyn std::fmt::Display| StoreError(format!("NATS bucket: {e}"));
    let read = async {
        let mut keys = bucket.keys().await.map_err(|e| failed(&e))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| failed(&e))?);
        }
        let (mut channels, mut bans) = (Vec::new(), Vec::new());
        for key in names {
            let Some(value) = bucket.get(&key).await.map_err(|e| failed(&e))? else {
                continue;
            };
            let parsed = if key.starts_with("channel.") {
                serde_json::from_slice(&value).map(|c| channels.push(c))
            } else {
                serde_json::from_slice(&value).map(|b| bans.push(b))
            };
            if let Err(e) = parsed {
                tracing::warn!(key, error = %e, "broker: a bad shared record was skipped");
            }
        }
        Ok((channels, bans))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(StoreError(format!(
            "NATS bucket: no answer within {timeout:?}"
        ))),
    }
}

/// Applies the changes in order: the bucket first, then the notice to the live nodes.
async fn write(
    bucket: Option<kv::Store>,
    client: async_nats::Client,
    subject: String,
    node: String,
    timeout: Duration,
    mut queue: mpsc::UnboundedReceiver<Change>,
) {
    while let Some(change) = queue.recv().await {
        if let Some(bucket) = &bucket {
            let written = match change.value {
                Some(value) => put(bucket, &change.key, value, timeout).await,
                None => match tokio::time::timeout(timeout, bucket.delete(&change.key)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(StoreError(format!("NATS bucket: {e}"))),
                    Err(_) => Err(StoreError("NATS bucket: no answer".into())),
                },
            };
            if let Err(e) = written {
                tracing::warn!(key = change.key, error = %e, "broker: a shared change was not kept");
            }
        }
        let request = ControlRequest {
            id: 0,
            from: node.clone(),
            control: change.notice,
        };
        let Ok(json) = serde_json::to_vec(&request) else {
            continue;
        };
        if client.publish(subject.clone(), json.into()).await.is_err() {
            tracing::warn!("broker: a shared change was not announced (NATS unavailable)");
        }
    }
}

impl Store for NatsStore {
    fn load_channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        match self.loaded.lock().0.take() {
            Some(channels) => Ok(channels),
            None => self.local.load_channels(),
        }
    }

    fn put_channel(&self, rec: &ChannelRecord) -> Result<(), StoreError> {
        self.connected()?;
        self.local.put_channel(rec)?;
        let notice = Control::ChannelPut {
            channel: rec.clone(),
        };
        self.change(
            format!("channel.{}", hex(&rec.name)),
            Some(json(rec)?),
            notice,
        )
    }

    fn delete_channel(&self, name: &str) -> Result<bool, StoreError> {
        self.connected()?;
        let deleted = self.local.delete_channel(name)?;
        let notice = Control::ChannelDeleted {
            name: name.to_string(),
        };
        self.change(format!("channel.{}", hex(name)), None, notice)?;
        Ok(deleted)
    }

    fn load_bans(&self) -> Result<Vec<BanRecord>, StoreError> {
        match self.loaded.lock().1.take() {
            Some(bans) => Ok(bans),
            None => self.local.load_bans(),
        }
    }

    fn put_ban(&self, ban: &BanRecord) -> Result<(), StoreError> {
        self.connected()?;
        self.local.put_ban(ban)?;
        let notice = Control::Banned { ban: ban.clone() };
        self.change(format!("ban.{}", hex(&ban.id())), Some(json(ban)?), notice)
    }

    fn delete_ban(&self, id: &str) -> Result<bool, StoreError> {
        self.connected()?;
        let deleted = self.local.delete_ban(id)?;
        let notice = Control::Unbanned { id: id.to_string() };
        self.change(format!("ban.{}", hex(id)), None, notice)?;
        Ok(deleted)
    }

    fn load_history(&self) -> Result<Vec<StoredHistory>, StoreError> {
        self.local.load_history()
    }

    fn write_history(&self, ops: &[HistoryOp], sync: bool) -> Result<(), StoreError> {
        self.local.write_history(ops, sync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_bucket_names_use_only_allowed_characters() {
        let allowed = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        assert!(allowed(&format!("ban.{}", hex("user:eve ünï"))));
        assert_eq!(bucket_name("herald"), "herald_shared");
        assert_eq!(bucket_name("a.b:c"), "a_b_c_shared");
    }
}
