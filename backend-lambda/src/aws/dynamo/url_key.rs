//! The secret that signs the block URLs the service serves itself in AWS mode: those of the
//! small blocks the table keeps (`small_blocks.rs`), which S3 does not hold. Every Lambda
//! instance must sign and check with the same key, so it lives in the table, made once:
//!
//! | item | PK | SK | attributes |
//! |---|---|---|---|
//! | block URL key | `CONFIG` | `URL_KEY` | `key`: 32 random bytes |
//!
//! The first reader that finds no key writes one on the condition that there is still none,
//! then reads whichever key won, so racing cold starts agree. Changing the item (deleting
//! it: the next start makes a new one) revokes every small-block URL handed out.

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{be, count, key, DynamoStore};
use crate::aws::PK;
use crate::store::{StoreError, StoreResult};

const CONFIG: &str = "CONFIG";
const URL_KEY: &str = "URL_KEY";

impl DynamoStore {
    /// The table's block URL key, made on first use.
    pub async fn block_url_key(&self) -> StoreResult<Vec<u8>> {
        if let Some(k) = self.stored_url_key().await? {
            return Ok(k);
        }
        let mut fresh = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut fresh);
        let mut item = key(CONFIG.into(), URL_KEY.into());
        item.insert("key".into(), AttributeValue::B(Blob::new(fresh)));
        count("dynamodb:PutItem");
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        if let Err(e) = put {
            let lost_race = e
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception());
            if !lost_race {
                return Err(be(e));
            }
        }
        self.stored_url_key()
            .await?
            .ok_or_else(|| StoreError::Backend("the block URL key was not stored".into()))
    }

    async fn stored_url_key(&self) -> StoreResult<Option<Vec<u8>>> {
        let Some(item) = self.get(CONFIG.into(), URL_KEY.into()).await? else {
            return Ok(None);
        };
        match item.get("key") {
            Some(AttributeValue::B(b)) if b.as_ref().len() >= 32 => {
                Ok(Some(b.clone().into_inner()))
            }
            _ => Err(StoreError::Backend(
                "the block URL key item holds no usable key".into(),
            )),
        }
    }
}
