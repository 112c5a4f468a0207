# The scheduled maintenance (backend-lambda/src/aws/scheduled.rs): once a day (by default,
# `maintenance_schedule`) EventBridge
# starts a second function from the same package (`JEWEL_TASK=maintenance`), which empties
# trash and forgets versions past their retention and collects the blocks nothing references
# (mark and sweep with a grace period, safe beside the API's commits: block_gc.rs). It has a
# role of its own, the only one that may delete blocks; the API's role still cannot.

resource "aws_cloudwatch_log_group" "maintenance" {
  # checkov:skip=CKV_AWS_158: log lines hold user ids and counts, no file content or tokens; the default CloudWatch encryption suffices.
  # checkov:skip=CKV_AWS_338: one year of logs costs more than the service itself; 30 days covers debugging.
  name              = "/aws/lambda/${var.name}-maintenance"
  retention_in_days = var.cloudwatch_log_days
}

resource "aws_lambda_function" "maintenance" {
  # checkov:skip=CKV_AWS_116: a failed run is simply done again by the next one (every step is idempotent); a dead-letter queue would hold nothing to act on.
  # checkov:skip=CKV_AWS_117: the function reaches only AWS APIs; a VPC would need NAT or interface endpoints (dollars per month) for no gain.
  # checkov:skip=CKV_AWS_173: the environment holds resource names, no secrets.
  # checkov:skip=CKV_AWS_50: one run a day; its log says what it did, a trace would add nothing.
  # checkov:skip=CKV_AWS_272: code signing needs a signing profile pipeline; the package is built and deployed from one trusted checkout.
  # checkov:skip=CKV_AWS_115: no reserved concurrency, as for the API (a new account's quota of 10 leaves none to reserve); overlapping runs are safe, every change they make is conditional.
  function_name    = "${var.name}-maintenance"
  role             = aws_iam_role.maintenance.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.lambda_architecture]
  filename         = var.lambda_zip
  source_code_hash = filebase64sha256(var.lambda_zip)
  memory_size      = var.maintenance_memory_mb
  # Lambda's limit; a run stops taking on users after 10 minutes (RUN_BUDGET) and the next
  # one goes on from there.
  timeout = 900

  environment {
    variables = {
      JEWEL_TASK    = "maintenance"
      JEWEL_BACKEND = "aws"
      JEWEL_TABLE   = aws_dynamodb_table.meta.name
      JEWEL_BUCKET  = aws_s3_bucket.blocks.bucket
      RUST_LOG      = "info"
    }
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.maintenance.name
  }

  depends_on = [aws_iam_role_policy.maintenance]
}

resource "aws_cloudwatch_event_rule" "maintenance" {
  name                = "${var.name}-maintenance"
  description         = "Starts the JewelFS maintenance run: trash and version expiry, block garbage collection."
  schedule_expression = var.maintenance_schedule
}

resource "aws_cloudwatch_event_target" "maintenance" {
  rule      = aws_cloudwatch_event_rule.maintenance.name
  target_id = "maintenance"
  arn       = aws_lambda_function.maintenance.arn
}

resource "aws_lambda_permission" "maintenance" {
  statement_id  = "eventbridge-schedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.maintenance.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.maintenance.arn
}

# ---- the maintenance role: the table, and deleting blocks ----

resource "aws_iam_role" "maintenance" {
  name               = "${var.name}-maintenance"
  assume_role_policy = data.aws_iam_policy_document.lambda_trust.json
}

data "aws_iam_policy_document" "maintenance" {
  statement {
    sid = "Table"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:DeleteItem",
      "dynamodb:Query",
      "dynamodb:BatchGetItem",
      "dynamodb:BatchWriteItem",
      "dynamodb:ConditionCheckItem",
    ]
    resources = [aws_dynamodb_table.meta.arn]
  }
  statement {
    # DeleteObjects is authorised as s3:DeleteObject per key. With versioning on, a delete
    # leaves a noncurrent version, kept `trash_retention_days` (s3.tf).
    sid       = "CollectBlocks"
    actions   = ["s3:DeleteObject"]
    resources = ["${aws_s3_bucket.blocks.arn}/u/*"]
  }
  statement {
    sid       = "ListBlocks"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.blocks.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["u/*"]
    }
  }
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.maintenance.arn}:*"]
  }
}

resource "aws_iam_role_policy" "maintenance" {
  name   = "maintenance"
  role   = aws_iam_role.maintenance.id
  policy = data.aws_iam_policy_document.maintenance.json
}
