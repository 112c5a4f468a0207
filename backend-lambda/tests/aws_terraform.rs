//! The deployment and the code agree: the table's keys and TTL attribute, the environment the
//! Lambda gets and the code reads, the queue names the IAM policies cover, and every route of
//! the router (and only those) in API Gateway. Reads `terraform/*.tf` and the router's source
//! as text, so a rename on either side fails here instead of in production.

#![cfg(feature = "aws")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use backend_lambda::aws;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The value of `key = "value"` inside the text (the first one).
fn string_attr(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix(key)?.trim_start().strip_prefix('=')?.trim();
        Some(rest.trim_matches('"').to_string())
    })
}

/// The body of the first `name {` block after `after` (brace-matched).
fn block<'a>(text: &'a str, after: &str, name: &str) -> &'a str {
    let start = text
        .find(after)
        .unwrap_or_else(|| panic!("{after} not found"));
    let open = start + text[start..].find(&format!("{name} {{")).unwrap() + name.len() + 2;
    let mut depth = 1;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unclosed {name} block")
}

#[test]
fn table_keys_and_ttl_match() {
    let tf = read("terraform/dynamodb.tf");
    assert_eq!(string_attr(&tf, "hash_key").as_deref(), Some(aws::PK));
    assert_eq!(string_attr(&tf, "range_key").as_deref(), Some(aws::SK));
    let ttl = block(&tf, "resource \"aws_dynamodb_table\"", "ttl");
    assert_eq!(
        string_attr(ttl, "attribute_name").as_deref(),
        Some(aws::TTL_ATTR)
    );
    assert_eq!(string_attr(ttl, "enabled").as_deref(), Some("true"));
    let pitr = block(
        &tf,
        "resource \"aws_dynamodb_table\"",
        "point_in_time_recovery",
    );
    assert_eq!(string_attr(pitr, "enabled").as_deref(), Some("true"));
}

#[test]
fn lambda_environment_is_what_the_code_reads() {
    let tf = read("terraform/lambda.tf");
    let vars = block(&tf, "resource \"aws_lambda_function\"", "variables =");
    let set: BTreeSet<String> = vars
        .lines()
        .filter_map(|l| l.split('=').next())
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    let code: BTreeSet<String> = [
        "JEWEL_BACKEND",
        aws::ENV_TABLE,
        aws::ENV_BUCKET,
        aws::ENV_QUEUE_PREFIX,
        aws::ENV_LISTENER_ROLE,
        aws::ENV_LOG_RETENTION_DAYS,
        "RUST_LOG",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(set, code);
    assert_eq!(string_attr(vars, "JEWEL_BACKEND").as_deref(), Some("aws"));
    // bootstrap reads JEWEL_BACKEND, and the AWS module's variables are the ones above.
    let bootstrap = read("backend-lambda/src/bin/bootstrap.rs");
    assert!(bootstrap.contains("\"JEWEL_BACKEND\"") && bootstrap.contains("Ok(\"aws\")"));
}

#[test]
fn queue_names_are_covered_by_the_iam_policies() {
    let lambda = read("terraform/lambda.tf");
    let iam = read("terraform/iam.tf");
    assert_eq!(
        string_attr(&lambda, aws::ENV_QUEUE_PREFIX).as_deref(),
        Some("var.name")
    );
    let arns = string_attr(&iam, "queue_arns").unwrap();
    assert!(arns.ends_with(":${var.name}_*"), "{arns}");
    // The code names queues `<prefix>_...`, which that pattern covers.
    let settings = aws::AwsSettings {
        queue_prefix: "jewel".into(),
        ..Default::default()
    };
    let name = aws::sqs::queue_name(&settings.queue_prefix, "0123abcd", 42);
    assert!(name.starts_with("jewel_"), "{name}");
    assert!(name.len() <= 80);
    // ... and no queue of another deployment whose name shares the prefix: names cannot
    // hold the `_` that ends the prefix.
    let vars = read("terraform/variables.tf");
    let name_var = block(&vars, "variable \"name\"", "validation");
    assert!(
        name_var.contains("^[a-z][a-z0-9-]{1,30}$"),
        "deployment names must not allow `_`: {name_var}"
    );
    let covered = |pattern_prefix: &str, queue: &str| queue.starts_with(pattern_prefix);
    for other in ["jewel-staging", "jewelx", "jewel-0123abcd"] {
        let theirs = aws::sqs::queue_name(other, "0123abcd", 42);
        assert!(!covered("jewel_", &theirs), "{theirs} matches jewel_*");
    }
    assert!(covered("jewel_", &name));
    // The service never deletes a block: the role cannot.
    assert!(
        !iam.contains("\"s3:DeleteObject\""),
        "the Lambda role needs no s3:DeleteObject"
    );
    // Devices can receive and delete; they cannot send.
    let listener = block(
        &iam,
        "data \"aws_iam_policy_document\" \"listener\"",
        "statement",
    );
    assert!(listener.contains("sqs:ReceiveMessage") && listener.contains("sqs:DeleteMessage"));
    assert!(!listener.contains("SendMessage") && !listener.contains("sqs:*"));
}

/// `METHOD /path` of every route in a router's source (`.route("/p", get(..).post(..))`).
fn routes_in(source: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap();
        let end = chunk
            .find(".layer(")
            .or_else(|| chunk.find(".with_state("))
            .unwrap_or(chunk.len());
        for method in ["get", "post", "put", "patch", "delete"] {
            let body = &chunk[..end];
            let called = body.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0
                    || !body.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && body.as_bytes()[i - 1] != b'_'
            });
            if called {
                out.insert(format!("{} {prefix}{path}", method.to_uppercase()));
            }
        }
    }
    out
}

#[test]
fn api_gateway_has_every_route_of_the_router() {
    let api = read("backend-lambda/src/api/mod.rs");
    // The API proper; the `/blob/...` routes serve the local block folder, which S3 replaces.
    let api_part = api.split("let blobs").next().unwrap();
    let mut code = routes_in(api_part, jewel_wire::API_PREFIX);
    let portal = read("backend-lambda/src/portal/mod.rs");
    code.extend(routes_in(&portal, ""));
    assert!(code.len() > 15, "{code:?}");

    let tf = read("terraform/api.tf");
    let start = tf.find("toset([").unwrap() + 7;
    let end = start + tf[start..].find("])").unwrap();
    let deployed: BTreeSet<String> = tf[start..end]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('"'))
        .map(|l| l.trim_end_matches(',').trim_matches('"').to_string())
        .collect();
    let missing: Vec<_> = code.difference(&deployed).collect();
    let extra: Vec<_> = deployed.difference(&code).collect();
    assert!(
        missing.is_empty(),
        "routes the router has but API Gateway lacks: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "routes in API Gateway the router does not have: {extra:?}"
    );
}

/// A new AWS account has a concurrency quota of 10 and Lambda keeps 10 unreserved, so any
/// reserved concurrency is refused there (`terraform apply` fails). The default reserves none;
/// a deployment that has asked AWS for more sets `lambda_concurrency` (docs/DEPLOY.md).
#[test]
fn apply_on_a_new_account_reserves_no_concurrency_by_default() {
    let vars = read("terraform/variables.tf");
    let concurrency = block(
        &vars,
        "variable \"lambda_concurrency\"",
        "variable \"lambda_concurrency\"",
    );
    assert_eq!(
        string_attr(concurrency, "default").as_deref(),
        Some("null"),
        "lambda_concurrency must default to none: {concurrency}"
    );
    let lambda = read("terraform/lambda.tf");
    assert_eq!(
        string_attr(&lambda, "reserved_concurrent_executions").as_deref(),
        Some("var.lambda_concurrency")
    );
    let deploy = read("docs/DEPLOY.md");
    assert!(
        deploy.contains("Service Quotas") && deploy.contains("lambda_concurrency"),
        "DEPLOY.md says how to ask for more concurrency and then reserve it"
    );
}

/// The deployment watches its own bill: a monthly cost budget that alerts before the money
/// is spent (forecast) and when most of it is (actual), its amount and recipients variables.
#[test]
fn a_monthly_budget_alerts_on_cost() {
    let tf = read("terraform/budget.tf");
    assert!(tf.contains("resource \"aws_budgets_budget\""), "{tf}");
    assert_eq!(string_attr(&tf, "budget_type").as_deref(), Some("COST"));
    assert_eq!(string_attr(&tf, "time_unit").as_deref(), Some("MONTHLY"));
    assert!(tf.contains("var.monthly_budget_usd"));
    for kind in ["ACTUAL", "FORECASTED"] {
        assert!(
            tf.contains(&format!("notification_type          = \"{kind}\"")),
            "an alert on {kind} cost"
        );
    }
    assert!(tf.contains("var.budget_alert_emails"));
    let vars = read("terraform/variables.tf");
    assert!(vars.contains("variable \"monthly_budget_usd\""));
    assert!(vars.contains("variable \"budget_alert_emails\""));
    assert!(read("docs/DEPLOY.md").contains("budget_alert_emails"));
}

/// X-Ray traces cost more per change than DynamoDB (docs/COST.md): Lambda's sampling (one
/// request a second plus 5 %) cannot be changed, so at a few requests a second every request
/// is traced. Tracing is a switch, on by default, that a deployment can turn off.
#[test]
fn xray_tracing_is_a_switch() {
    let lambda = read("terraform/lambda.tf");
    let tracing = block(
        &lambda,
        "resource \"aws_lambda_function\"",
        "tracing_config",
    );
    assert!(
        tracing.contains("mode = var.xray_tracing ? \"Active\" : \"PassThrough\""),
        "{tracing}"
    );
    let vars = read("terraform/variables.tf");
    let switch = block(
        &vars,
        "variable \"xray_tracing\"",
        "variable \"xray_tracing\"",
    );
    assert_eq!(string_attr(switch, "default").as_deref(), Some("true"));
    assert!(read("docs/COST.md").contains("xray_tracing"));
}

/// Trash, versions and unreferenced blocks are collected in AWS mode by a function that
/// EventBridge starts on a schedule: the same package told its task by the variable the code
/// reads, allowed to run longer than a run's budget, invoked only by its rule, and the only
/// role that may delete blocks.
#[test]
fn maintenance_runs_on_a_schedule_with_its_own_role() {
    use backend_lambda::aws::scheduled;
    let tf = read("terraform/maintenance.tf");
    let function = block(
        &tf,
        "resource \"aws_lambda_function\" \"maintenance\"",
        "variables =",
    );
    assert_eq!(
        string_attr(function, scheduled::ENV_TASK).as_deref(),
        Some(scheduled::TASK_MAINTENANCE)
    );
    assert_eq!(
        string_attr(function, "JEWEL_BACKEND").as_deref(),
        Some("aws")
    );
    for var in [aws::ENV_TABLE, aws::ENV_BUCKET] {
        assert!(string_attr(function, var).is_some(), "{var} is set");
    }
    let timeout: u64 = string_attr(&tf, "timeout").unwrap().parse().unwrap();
    assert!(
        timeout <= 900 && timeout > scheduled::RUN_BUDGET.as_secs() + 60,
        "a run's budget ({:?}) fits well inside the function's timeout ({timeout} s)",
        scheduled::RUN_BUDGET
    );
    assert_eq!(
        string_attr(&tf, "schedule_expression").as_deref(),
        Some("var.maintenance_schedule")
    );
    let vars = read("terraform/variables.tf");
    let schedule = block(
        &vars,
        "variable \"maintenance_schedule\"",
        "variable \"maintenance_schedule\"",
    );
    assert_eq!(
        string_attr(schedule, "default").as_deref(),
        Some("rate(1 day)")
    );
    let target = block(
        &tf,
        "resource \"aws_cloudwatch_event_target\" \"maintenance\"",
        "resource \"aws_cloudwatch_event_target\" \"maintenance\"",
    );
    assert!(
        target.contains("aws_lambda_function.maintenance.arn"),
        "{target}"
    );
    let permission = block(
        &tf,
        "resource \"aws_lambda_permission\" \"maintenance\"",
        "resource \"aws_lambda_permission\" \"maintenance\"",
    );
    assert_eq!(
        string_attr(permission, "principal").as_deref(),
        Some("events.amazonaws.com")
    );
    assert_eq!(
        string_attr(permission, "source_arn").as_deref(),
        Some("aws_cloudwatch_event_rule.maintenance.arn")
    );
    // Only the maintenance role deletes blocks; the API's cannot.
    let role = block(
        &tf,
        "data \"aws_iam_policy_document\" \"maintenance\"",
        "data \"aws_iam_policy_document\" \"maintenance\"",
    );
    assert!(role.contains("\"s3:DeleteObject\""), "{role}");
    assert!(!read("terraform/iam.tf").contains("\"s3:DeleteObject\""));
    // bootstrap switches on the same variable.
    let bootstrap = read("backend-lambda/src/bin/bootstrap.rs");
    assert!(bootstrap.contains("scheduled::ENV_TASK") && bootstrap.contains("lambda_main"));
    assert!(read("docs/DEPLOY.md").contains("maintenance_schedule"));
}

/// Every DynamoDB, SQS and STS request the service code makes (each is counted by name,
/// `count("dynamodb:GetItem")`) is allowed to the API's role, but for the few that only the
/// operator's admin commands make. IAM names its actions after the requests, except where
/// one action covers several (SendMessageBatch is sqs:SendMessage; a transaction is
/// authorised per item by the item actions). Found missing: dynamodb:BatchGetItem (a publish
/// reads the device queue records with it) and sqs:DeleteQueue (unlinking a device deletes
/// its queue from the Lambda).
#[test]
fn the_api_role_allows_every_request_the_service_makes() {
    let admin_only = [
        "dynamodb:CreateTable",        // aws-init
        "dynamodb:DescribeTable",      // aws-init
        "dynamodb:UpdateTimeToLive",   // aws-init
        "dynamodb:TransactWriteItems", // authorised per item (PutItem, UpdateItem, ...)
        "sqs:ListQueues",              // user remove, forget-devices
    ];
    let mut requests = BTreeSet::new();
    let mut dirs = vec![root().join("backend-lambda/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for chunk in text.split("count(\"").skip(1) {
                    let op = chunk.split('"').next().unwrap();
                    let op = op.split(' ').next().unwrap();
                    if ["dynamodb:", "sqs:", "sts:"]
                        .iter()
                        .any(|s| op.starts_with(s))
                    {
                        requests.insert(op.replace("SendMessageBatch", "SendMessage"));
                    }
                }
            }
        }
    }
    assert!(requests.contains("dynamodb:GetItem") && requests.contains("sqs:SendMessage"));
    let iam = read("terraform/iam.tf");
    let api_role = block(
        &iam,
        "data \"aws_iam_policy_document\" \"lambda\"",
        "data \"aws_iam_policy_document\" \"lambda\"",
    );
    let missing: Vec<&String> = requests
        .iter()
        .filter(|op| !admin_only.contains(&op.as_str()))
        .filter(|op| !api_role.contains(&format!("\"{op}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "requests the service makes that its role may not: {missing:?}"
    );
}
