//! What the AWS-mode bench measured, turned into requests per change and dollars per
//! user-month (the `docs/COST.md` scenario), so the cost model rests on counts taken at
//! N = 10 and N = 100 users and shows whether a user's cost depends on how many others there
//! are (it must not: one table partitioned per user).
//!
//! Measured (by `jewel-server`, which writes its AWS request counts to
//! `JEWEL_REQUEST_COUNTS_FILE`): every DynamoDB and S3 request of the service, and the API
//! calls (its request log). Derived, and labelled so in the table: the devices' own S3
//! transfers (one PUT and one GET per created file: the bench's files are one block each),
//! and SQS, which the bench does not run (it uses the long-poll bus so moto's SQS adds no
//! load): 6 requests per change (a send to each of the user's two queues, a receive and a
//! delete on each device), as `backend-lambda/tests/aws_cost.rs` measures them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// us-east-1 on-demand list prices (2025), dollars per unit.
pub mod price {
    pub const DYNAMO_WRU: f64 = 0.625e-6;
    pub const DYNAMO_RRU: f64 = 0.125e-6;
    pub const S3_PUT: f64 = 0.005e-3;
    pub const S3_GET: f64 = 0.0004e-3;
    pub const API_CALL: f64 = 1.0e-6;
    pub const LAMBDA_REQUEST: f64 = 0.2e-6;
    /// 256 MB for ~60 ms (x86_64, $0.0000166667 per GB-second).
    pub const LAMBDA_DURATION: f64 = 0.25 * 0.060 * 0.000_016_666_7;
    pub const SQS_REQUEST: f64 = 0.4e-6;
    /// Active tracing: at a few requests a second every request is sampled (1 a second plus
    /// 5 %), so one trace per API call.
    pub const XRAY_TRACE: f64 = 5.0e-6;
    /// A lifecycle transition into Intelligent-Tiering, per object. Uploading straight into
    /// the class (`x-amz-storage-class: INTELLIGENT_TIERING`) costs none.
    pub const IT_TRANSITION: f64 = 0.01e-3;
}

/// The COST.md scenario: changes a user makes in a month, and the fixed monthly cost of two
/// always-on devices (idle SQS long polls and hourly renewals: $0.104 + $0.010) and of 10 GB
/// stored ($0.165), all from COST.md's table.
pub const CHANGES_PER_MONTH: f64 = 3000.0;
pub const FIXED_PER_USER_MONTH: f64 = 0.104 + 0.010 + 0.165;
const SQS_PER_CHANGE: f64 = 6.0;

/// One AWS-mode run of the bench.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub users: usize,
    /// Files created plus files deleted (each is one change).
    pub changes: u64,
    pub creates: u64,
    /// API calls the service answered (long polls excluded).
    pub api_calls: u64,
    /// The service's AWS requests by operation (`dynamodb:GetItem`, …), over the run.
    pub aws: BTreeMap<String, u64>,
    pub wall_s: f64,
}

/// Requests of one kind per change.
#[derive(Debug, Clone, Default)]
pub struct PerChange {
    pub rru: f64,
    pub wru: f64,
    pub s3_put: f64,
    pub s3_get: f64,
    pub api: f64,
}

impl Measured {
    fn get(&self, op: &str) -> f64 {
        self.aws.get(op).copied().unwrap_or(0) as f64
    }

    pub fn per_change(&self) -> PerChange {
        let c = self.changes.max(1) as f64;
        // A strongly consistent read of an item under 4 KB is one read unit (our items are
        // 0.3-1 KB; a query page of small items likewise about one). A transaction writes two
        // units per item of up to 1 KB; a plain write one.
        let rru = self.get("dynamodb:GetItem")
            + self.get("dynamodb:Query")
            + self.get("dynamodb:BatchGetItem");
        let wru = 2.0 * self.get("dynamodb:TransactWriteItems (items)")
            + self.get("dynamodb:PutItem")
            + self.get("dynamodb:UpdateItem")
            + self.get("dynamodb:DeleteItem")
            + self.get("dynamodb:BatchWriteItem");
        PerChange {
            rru: rru / c,
            wru: wru / c,
            s3_put: (self.get("s3:PutObject") + self.creates as f64) / c,
            s3_get: (self.get("s3:GetObject") + self.get("s3:HeadObject") + self.creates as f64)
                / c,
            api: self.api_calls as f64 / c,
        }
    }

    /// Dollars per change, by service.
    pub fn dollars_per_change(&self) -> BTreeMap<&'static str, f64> {
        let p = self.per_change();
        let new_blocks = self.creates as f64 / self.changes.max(1) as f64;
        BTreeMap::from([
            (
                "DynamoDB",
                p.rru * price::DYNAMO_RRU + p.wru * price::DYNAMO_WRU,
            ),
            (
                "S3 requests",
                p.s3_put * price::S3_PUT + p.s3_get * price::S3_GET,
            ),
            (
                "API Gateway + Lambda",
                p.api * (price::API_CALL + price::LAMBDA_REQUEST + price::LAMBDA_DURATION),
            ),
            ("X-Ray", p.api * price::XRAY_TRACE),
            ("SQS (derived)", SQS_PER_CHANGE * price::SQS_REQUEST),
            ("IT transition", new_blocks * price::IT_TRANSITION),
        ])
    }

    pub fn dollars_per_million_changes(&self) -> f64 {
        self.dollars_per_change().values().sum::<f64>() * 1e6
    }

    pub fn dollars_per_user_month(&self) -> f64 {
        self.dollars_per_change().values().sum::<f64>() * CHANGES_PER_MONTH + FIXED_PER_USER_MONTH
    }
}

/// The markdown section of BENCHMARKS.md.
pub fn table(runs: &[Measured]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| users | changes | wall (s) | API calls / change | DynamoDB read units / change | \
         write units / change | S3 PUT / change (devices, derived) | S3 GET+HEAD / change | \
         $ per million changes | $ per user-month |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for m in runs {
        let p = m.per_change();
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.3} |",
            m.users,
            m.changes,
            m.wall_s,
            p.api,
            p.rru,
            p.wru,
            p.s3_put,
            p.s3_get,
            m.dollars_per_million_changes(),
            m.dollars_per_user_month()
        );
    }
    if let Some(m) = runs.last() {
        let _ = writeln!(
            s,
            "\nPer change at N = {} (dollars per million changes): {}.\n",
            m.users,
            m.dollars_per_change()
                .iter()
                .map(|(k, v)| format!("{k} {:.2}", v * 1e6))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(s, "The service's AWS requests at N = {}:\n", m.users);
        let _ = writeln!(s, "| operation | requests | per change |\n|---|---|---|");
        for (op, n) in &m.aws {
            let _ = writeln!(
                s,
                "| `{op}` | {n} | {:.2} |",
                *n as f64 / m.changes.max(1) as f64
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_costs_what_its_requests_cost() {
        let m = Measured {
            users: 1,
            changes: 2,
            creates: 1,
            api_calls: 4,
            aws: BTreeMap::from([
                ("dynamodb:GetItem".to_string(), 10),
                ("dynamodb:TransactWriteItems (items)".to_string(), 10),
            ]),
            wall_s: 1.0,
        };
        let p = m.per_change();
        assert_eq!((p.rru, p.wru, p.api), (5.0, 10.0, 2.0));
        let d = m.dollars_per_change();
        assert!((d["X-Ray"] - 2.0 * 5.0e-6).abs() < 1e-12);
        assert!(m.dollars_per_user_month() > FIXED_PER_USER_MONTH);
    }
}
