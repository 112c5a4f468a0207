resource "aws_cloudwatch_log_group" "lambda" {
  # checkov:skip=CKV_AWS_158: log lines hold request paths and ids, no file content or tokens; the default CloudWatch encryption suffices and a KMS key would cost more than the service.
  # checkov:skip=CKV_AWS_338: one year of logs costs more than the service itself; 30 days covers debugging.
  name              = "/aws/lambda/${var.name}"
  retention_in_days = var.cloudwatch_log_days
}

resource "aws_lambda_function" "api" {
  # checkov:skip=CKV_AWS_116: API Gateway invokes synchronously and gets the error; a dead-letter queue applies only to asynchronous invocations.
  # checkov:skip=CKV_AWS_117: the function reaches only AWS APIs; a VPC would need NAT or interface endpoints (dollars per month) for no gain.
  # checkov:skip=CKV_AWS_173: the environment holds resource names, no secrets.
  # checkov:skip=CKV_AWS_50: X-Ray tracing is on by default; `xray_tracing = false` turns it off to save its cost (docs/COST.md).
  # checkov:skip=CKV_AWS_272: code signing needs a signing profile pipeline; the package is built and deployed from one trusted checkout.
  function_name    = var.name
  role             = aws_iam_role.lambda.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.lambda_architecture]
  filename         = var.lambda_zip
  source_code_hash = filebase64sha256(var.lambda_zip)
  memory_size      = var.lambda_memory_mb
  timeout          = 29

  reserved_concurrent_executions = var.lambda_concurrency

  environment {
    variables = {
      JEWEL_BACKEND            = "aws"
      JEWEL_TABLE              = aws_dynamodb_table.meta.name
      JEWEL_BUCKET             = aws_s3_bucket.blocks.bucket
      JEWEL_QUEUE_PREFIX       = var.name
      JEWEL_LISTENER_ROLE_ARN  = aws_iam_role.listener.arn
      JEWEL_LOG_RETENTION_DAYS = tostring(var.log_retention_days)
      RUST_LOG                 = "info"
    }
  }

  # Lambda traces 1 request a second plus 5 % (not configurable): at this service's rates
  # that is every request, about $13 per million changes (docs/COST.md).
  tracing_config {
    mode = var.xray_tracing ? "Active" : "PassThrough"
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.lambda.name
  }

  depends_on = [aws_iam_role_policy.lambda]
}

resource "aws_lambda_permission" "api" {
  statement_id  = "api-gateway"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.api.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.api.execution_arn}/*/*"
}
