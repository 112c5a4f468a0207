# The single table (DESIGN.md): PK/SK strings, on-demand billing, TTL on `ttl` trims the change
# log, point-in-time recovery for the day something breaks.
resource "aws_dynamodb_table" "meta" {
  name                        = var.name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "PK"
  range_key                   = "SK"
  deletion_protection_enabled = true

  attribute {
    name = "PK"
    type = "S"
  }
  attribute {
    name = "SK"
    type = "S"
  }

  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  # checkov:skip=CKV_AWS_119: encrypted at rest with the AWS-owned key; a customer-managed KMS key costs $1/month, twice this deployment's whole budget, and adds a KMS request to every read.
  server_side_encryption {
    enabled = false
  }
}
