locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  # Queues are named `<name>_<user>-<device>`. `var.name` cannot contain `_` (see its
  # validation), so `<name>_*` matches this deployment's queues only: a deployment whose
  # name merely begins with ours (`jewel` and `jewel-staging`) has its `_` elsewhere.
  queue_arns = "arn:${local.partition}:sqs:${var.region}:${local.account}:${var.name}_*"
}

# ---- the Lambda's role: exactly what the service calls ----

data "aws_iam_policy_document" "lambda_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lambda" {
  name               = "${var.name}-service"
  assume_role_policy = data.aws_iam_policy_document.lambda_trust.json
}

data "aws_iam_policy_document" "lambda" {
  statement {
    sid = "Table"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:DeleteItem",
      "dynamodb:Query",
      # Device queue records read for a publish, condemned blocks read for a block check.
      "dynamodb:BatchGetItem",
      "dynamodb:BatchWriteItem",
      "dynamodb:ConditionCheckItem",
    ]
    resources = [aws_dynamodb_table.meta.arn]
  }
  statement {
    # No s3:DeleteObject: the service never deletes a block (block garbage collection runs
    # as the maintenance function, maintenance.tf, and `jewel-server user remove` with the
    # operator's credentials, not this role).
    sid       = "Blocks"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.blocks.arn}/u/*"]
  }
  statement {
    # HeadObject of a missing key answers 404 (not 403) only with ListBucket.
    sid       = "BlockExistence"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.blocks.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["u/*"]
    }
  }
  statement {
    sid = "DeviceQueues"
    actions = [
      "sqs:CreateQueue",
      "sqs:TagQueue",
      "sqs:GetQueueUrl",
      "sqs:GetQueueAttributes",
      "sqs:SendMessage",
      # Unlinking a device deletes its queue (its credentials then reach nothing).
      "sqs:DeleteQueue",
    ]
    resources = [local.queue_arns]
  }
  statement {
    sid       = "DeviceCredentials"
    actions   = ["sts:AssumeRole"]
    resources = [aws_iam_role.listener.arn]
  }
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda.arn}:*"]
  }
  statement {
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "lambda" {
  name   = "service"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda.json
}

# ---- the listener role: what a device's credentials can ever do ----
# The service assumes it with a session policy naming one queue, so each device's credentials
# reach only its own queue (the intersection of this policy and the session policy).

data "aws_iam_policy_document" "listener_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.lambda.arn]
    }
  }
}

resource "aws_iam_role" "listener" {
  name                 = "${var.name}-device-listener"
  assume_role_policy   = data.aws_iam_policy_document.listener_trust.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "listener" {
  statement {
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
    ]
    resources = [local.queue_arns]
  }
}

resource "aws_iam_role_policy" "listener" {
  name   = "receive-own-queue"
  role   = aws_iam_role.listener.id
  policy = data.aws_iam_policy_document.listener.json
}
