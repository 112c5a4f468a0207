output "api_url" {
  description = "The service URL to give `jewelfs mount --server`."
  value       = trimsuffix(aws_apigatewayv2_stage.default.invoke_url, "/")
}

output "table" {
  description = "JEWEL_TABLE for admin commands (`jewel-server user add NAME --backend aws`)."
  value       = aws_dynamodb_table.meta.name
}

output "bucket" {
  description = "JEWEL_BUCKET for admin commands."
  value       = aws_s3_bucket.blocks.bucket
}

output "queue_prefix" {
  description = "JEWEL_QUEUE_PREFIX for admin commands."
  value       = var.name
}

output "listener_role_arn" {
  description = "JEWEL_LISTENER_ROLE_ARN for admin commands."
  value       = aws_iam_role.listener.arn
}
