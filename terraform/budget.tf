# A monthly cost budget with alerts: the AWS bill of this deployment is cents to dollars a
# month (docs/COST.md), so a runaway client, a stuck device or a misconfiguration shows as a
# budget alert long before it shows on the invoice. Budgets cover the whole account (a new
# account for JewelFS alone is the simple case); the first two budgets of an account are free.
#
# Alerts go by email to `budget_alert_emails`;
# with no address the budget is still tracked in the Billing console.
resource "aws_budgets_budget" "monthly" {
  name         = "${var.name}-monthly"
  budget_type  = "COST"
  time_unit    = "MONTHLY"
  limit_amount = tostring(var.monthly_budget_usd)
  limit_unit   = "USD"

  # Most of the month's budget already spent.
  dynamic "notification" {
    for_each = length(var.budget_alert_emails) > 0 ? [1] : []
    content {
      comparison_operator        = "GREATER_THAN"
      threshold                  = 80
      threshold_type             = "PERCENTAGE"
      notification_type          = "ACTUAL"
      subscriber_email_addresses = var.budget_alert_emails
    }
  }

  # On course to exceed it: the early warning (AWS needs about a week of spend to forecast).
  dynamic "notification" {
    for_each = length(var.budget_alert_emails) > 0 ? [1] : []
    content {
      comparison_operator        = "GREATER_THAN"
      threshold                  = 100
      threshold_type             = "PERCENTAGE"
      notification_type          = "FORECASTED"
      subscriber_email_addresses = var.budget_alert_emails
    }
  }
}
