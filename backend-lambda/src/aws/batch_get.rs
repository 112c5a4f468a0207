//! Reading DynamoDB items by key in `BatchGetItem` requests: at most 100 keys a request
//! (DynamoDB's limit), strongly consistent, and the keys DynamoDB leaves unprocessed (it
//! does when throttled) sent again after a growing pause, ten times at most. The one loop
//! behind every read of many items by key: device queues, condemned blocks, small blocks.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use aws_sdk_dynamodb::Client;

use super::{count, sdk_err};

type Item = HashMap<String, AttributeValue>;

/// Keys per `BatchGetItem` (DynamoDB's limit).
const KEYS_PER_REQUEST: usize = 100;
/// Times the unprocessed keys of one request are sent again before giving up.
const MAX_RETRIES: u32 = 10;

/// Why a batched read failed.
#[derive(Debug)]
pub enum BatchGetError {
    /// DynamoDB kept leaving keys unprocessed through every retry.
    Throttled,
    /// The SDK call failed (its message).
    Sdk(String),
}

impl BatchGetError {
    /// The message for a read of `what` ("the device queues", "small blocks") that failed.
    pub fn reading(self, what: &str) -> String {
        match self {
            BatchGetError::Throttled => format!("reading {what} kept being throttled"),
            BatchGetError::Sdk(message) => message,
        }
    }
}

/// The items of `table` under `keys` that exist, in no particular order. `keys` should hold
/// no key twice (DynamoDB refuses a request that does). With `only`, each item is read with
/// that one attribute (its keys are not read back unless `only` names one).
pub async fn batch_get(
    client: &Client,
    table: &str,
    keys: Vec<Item>,
    only: Option<&str>,
) -> Result<Vec<Item>, BatchGetError> {
    let mut items = Vec::new();
    for chunk in keys.chunks(KEYS_PER_REQUEST) {
        let mut keys = chunk.to_vec();
        for attempt in 0.. {
            if keys.is_empty() {
                break;
            }
            if attempt > MAX_RETRIES {
                return Err(BatchGetError::Throttled);
            }
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut keys)))
                .consistent_read(true);
            if let Some(attribute) = only {
                request = request
                    .projection_expression("#only")
                    .expression_attribute_names("#only", attribute);
            }
            let request = request
                .build()
                .map_err(|e| BatchGetError::Sdk(sdk_err(&e)))?;
            count("dynamodb:BatchGetItem");
            let got = client
                .batch_get_item()
                .request_items(table, request)
                .send()
                .await
                .map_err(|e| BatchGetError::Sdk(sdk_err(&e)))?;
            items.extend(
                got.responses
                    .and_then(|mut r| r.remove(table))
                    .unwrap_or_default(),
            );
            if let Some(rest) = got.unprocessed_keys.and_then(|mut r| r.remove(table)) {
                keys = rest.keys;
                tokio::time::sleep(Duration::from_millis(20 << attempt.min(6))).await;
            }
        }
    }
    Ok(items)
}
