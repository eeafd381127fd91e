//! Creating the table (idempotent) and checking that it is there.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use orchestrator_core::ports::StoreError;

use super::{DynamoDbStore, keys};

/// How long [`DynamoDbStore::create_table`] waits for a new table to become active.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

fn build_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("cannot build the table definition: {e}"))
}

fn attr(name: &str) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(build_error)
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(build_error)
}

/// An index over (`pk`, `sk`) that carries `attrs` besides its keys.
fn index(
    name: &str,
    (pk, sk): (&str, &str),
    attrs: &[&str],
) -> Result<GlobalSecondaryIndex, StoreError> {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(pk, KeyType::Hash)?)
        .key_schema(key(sk, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .set_non_key_attributes(Some(attrs.iter().map(|a| (*a).to_owned()).collect()))
                .build(),
        )
        .build()
        .map_err(build_error)
}

impl DynamoDbStore {
    /// Creates the table with its index and TTL setting, on-demand billing, and waits until it
    /// is active. Does nothing to a table that already exists. For tests, emulators and local
    /// use; deployments create it from the SAM template.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let table = self.table.as_ref();
        // Only what a run listing shows: the state JSON stays out of the index, so a state
        // write does not copy it there.
        let runs = index(
            keys::GSI1,
            (keys::GSI1_PK, keys::GSI1_SK),
            &[
                keys::RUN_ID,
                keys::MODE,
                keys::OBJECTIVE,
                keys::STATUS,
                keys::CREATED_AT,
                keys::UPDATED_AT,
            ],
        )?;
        let active = index(
            keys::GSI2,
            (keys::GSI2_PK, keys::GSI2_SK),
            &[keys::RUN_ID, keys::STATUS, keys::CREATED_AT],
        )?;
        let created = self
            .client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr(keys::PK)?)
            .attribute_definitions(attr(keys::SK)?)
            .attribute_definitions(attr(keys::GSI1_PK)?)
            .attribute_definitions(attr(keys::GSI1_SK)?)
            .attribute_definitions(attr(keys::GSI2_PK)?)
            .attribute_definitions(attr(keys::GSI2_SK)?)
            .key_schema(key(keys::PK, KeyType::Hash)?)
            .key_schema(key(keys::SK, KeyType::Range)?)
            .global_secondary_indexes(runs)
            .global_secondary_indexes(active)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                tracing::debug!(table, "the table already exists");
            }
            Err(e) => return Err(self.fail("CreateTable", e)),
        }
        self.wait_active().await?;
        self.enable_ttl().await
    }

    /// Turns on expiry by the TTL attribute, unless it is on already.
    async fn enable_ttl(&self) -> Result<(), StoreError> {
        let table = self.table.as_ref();
        let ttl = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(keys::TTL)
            .build()
            .map_err(build_error)?;
        let described = self
            .client
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .map_err(|e| self.fail("DescribeTimeToLive", e))?;
        let enabled = described
            .time_to_live_description()
            .and_then(|d| d.attribute_name())
            .is_some_and(|name| name == keys::TTL);
        if !enabled {
            self.client
                .update_time_to_live()
                .table_name(table)
                .time_to_live_specification(ttl)
                .send()
                .await
                .map_err(|e| self.fail("UpdateTimeToLive", e))?;
        }
        Ok(())
    }

    /// Fails with a message naming the table, and how to create it, when it does not exist.
    pub async fn check_table(&self) -> Result<(), StoreError> {
        self.client
            .describe_table()
            .table_name(self.table.as_ref())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.fail("DescribeTable", e))
    }

    async fn wait_active(&self) -> Result<(), StoreError> {
        let table = self.table.as_ref();
        let deadline = tokio::time::Instant::now() + ACTIVE_TIMEOUT;
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| self.fail("DescribeTable", e))?;
            let status = out.table().and_then(|t| t.table_status());
            if status == Some(&TableStatus::Active) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "the DynamoDB table {table} is not active after {ACTIVE_TIMEOUT:?} (status {status:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
