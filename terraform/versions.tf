# JewelFS on AWS: one DynamoDB table, one S3 bucket, per-device SQS queues (created by the
# service at device registration), one Lambda behind an API Gateway HTTP API.
#
#   terraform init && terraform apply -var lambda_zip=../target/lambda-build/lambda/bootstrap/bootstrap.zip
#
# See docs/DEPLOY.md. Names shared with the code (table keys, TTL attribute, environment
# variables, queue prefix, routes) are checked by backend-lambda/tests/aws_terraform.rs.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = {
      app = "jewelfs"
      env = var.name
    }
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
