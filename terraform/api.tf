# HTTP API with one Lambda proxy integration (payload 2.0) and every route of the router.
# Block bytes never pass here: clients move them straight to S3 with presigned URLs.
locals {
  routes = toset([
    "GET /api/v1/health",
    "GET /api/v1/openapi.json",
    "GET /api/v1/me",
    "GET /api/v1/lookup",
    "POST /api/v1/nodes",
    "GET /api/v1/nodes/{id}",
    "PATCH /api/v1/nodes/{id}",
    "DELETE /api/v1/nodes/{id}",
    "GET /api/v1/nodes/{id}/children",
    "GET /api/v1/nodes/{id}/children/{name}",
    "PUT /api/v1/nodes/{id}/content",
    "POST /api/v1/nodes/{id}/move",
    "GET /api/v1/nodes/{id}/versions",
    "POST /api/v1/nodes/{id}/versions/{version}/restore",
    "GET /api/v1/trash",
    "POST /api/v1/trash/{id}/restore",
    "POST /api/v1/batch",
    "POST /api/v1/devices",
    "GET /api/v1/devices",
    "DELETE /api/v1/devices/{id}",
    "GET /api/v1/devices/{id}/poll",
    "POST /api/v1/devices/{id}/listen",
    "GET /api/v1/changes",
    "POST /api/v1/blocks/missing",
    "POST /api/v1/blocks/urls",
    "POST /api/v1/links",
    "GET /api/v1/links/{code}",
    "POST /api/v1/links/{code}/approve",
    # The web portal.
    "GET /",
    "GET /portal/{file}",
  ])
}

resource "aws_apigatewayv2_api" "api" {
  name          = var.name
  protocol_type = "HTTP"
}

resource "aws_apigatewayv2_integration" "lambda" {
  api_id                 = aws_apigatewayv2_api.api.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.api.invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 29000
}

resource "aws_apigatewayv2_route" "routes" {
  # checkov:skip=CKV_AWS_309: the service authenticates every request itself (bearer token, hashed in DynamoDB); an API Gateway authorizer would add a Lambda invocation per request.
  for_each           = local.routes
  api_id             = aws_apigatewayv2_api.api.id
  route_key          = each.value
  target             = "integrations/${aws_apigatewayv2_integration.lambda.id}"
  authorization_type = "NONE"
}

resource "aws_cloudwatch_log_group" "api" {
  # checkov:skip=CKV_AWS_158: access logs hold no secrets (tokens are in headers, which are not logged); default encryption suffices.
  # checkov:skip=CKV_AWS_338: a year of access logs costs more than the service; 30 days covers debugging.
  name              = "/aws/apigateway/${var.name}"
  retention_in_days = var.cloudwatch_log_days
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.api.id
  name        = "$default"
  auto_deploy = true

  default_route_settings {
    throttling_rate_limit  = var.throttle_rate
    throttling_burst_limit = var.throttle_burst
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api.arn
    format = jsonencode({
      requestId = "$context.requestId"
      ip        = "$context.identity.sourceIp"
      time      = "$context.requestTime"
      route     = "$context.routeKey"
      status    = "$context.status"
      latency   = "$context.integrationLatency"
    })
  }
}
