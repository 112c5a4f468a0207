locals {
  bucket = var.bucket_name != "" ? var.bucket_name : "${var.name}-blocks-${data.aws_caller_identity.current.account_id}"
}

# Blocks: u/<user>/b/<sha256>. Clients PUT and GET them through presigned URLs.
resource "aws_s3_bucket" "blocks" {
  # checkov:skip=CKV_AWS_18: access logging would write a log object per block request (doubling request costs); CloudTrail data events can be turned on when an audit needs them.
  # checkov:skip=CKV_AWS_144: cross-region replication doubles storage cost; versioning plus the 30-day noncurrent retention is the recovery story.
  # checkov:skip=CKV_AWS_145: SSE-S3 (AES-256) instead of SSE-KMS: KMS would add a billed request to every block GET and PUT.
  # checkov:skip=CKV2_AWS_62: nothing consumes bucket events; the service learns of blocks through its own API calls.
  bucket = local.bucket
}

resource "aws_s3_bucket_public_access_block" "blocks" {
  bucket                  = aws_s3_bucket.blocks.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "blocks" {
  bucket = aws_s3_bucket.blocks.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "blocks" {
  bucket = aws_s3_bucket.blocks.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# Versioning turns the garbage collector's deletes into noncurrent versions: a trash for
# blocks, expired by the lifecycle below.
resource "aws_s3_bucket_versioning" "blocks" {
  bucket = aws_s3_bucket.blocks.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "blocks" {
  bucket     = aws_s3_bucket.blocks.id
  depends_on = [aws_s3_bucket_versioning.blocks]

  # Blocks are immutable and mostly read once per machine: Intelligent-Tiering moves the
  # ones nobody reads to the cheaper tier without retrieval fees.
  rule {
    id     = "blocks-tiering"
    status = "Enabled"
    filter {
      and {
        prefix                   = "u/"
        object_size_greater_than = 131072 # smaller objects never leave the frequent tier
      }
    }
    transition {
      days          = 0
      storage_class = "INTELLIGENT_TIERING"
    }
  }

  # Trash: a block the garbage collector deleted stays recoverable this long.
  rule {
    id     = "trash"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.trash_retention_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  # Orphaned uploads: multipart uploads never completed.
  rule {
    id     = "orphaned-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# Only TLS.
resource "aws_s3_bucket_policy" "blocks" {
  bucket     = aws_s3_bucket.blocks.id
  depends_on = [aws_s3_bucket_public_access_block.blocks]
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "TlsOnly"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.blocks.arn, "${aws_s3_bucket.blocks.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
}

# The web portal (served by the API) moves blocks from the browser.
resource "aws_s3_bucket_cors_configuration" "blocks" {
  bucket = aws_s3_bucket.blocks.id
  cors_rule {
    allowed_methods = ["GET", "PUT"]
    allowed_origins = [aws_apigatewayv2_api.api.api_endpoint]
    allowed_headers = ["content-type", "x-amz-checksum-sha256"]
    max_age_seconds = 3600
  }
}
