# Alerts: a poisoned message (an operation that failed every retry: a revoke there is access
# outliving its grant until the sweep ends it), failed invocations, and a silent sweep.

resource "azurerm_monitor_action_group" "app" {
  name                = "${var.name}-jitc"
  resource_group_name = var.resource_group_name
  short_name          = "jitc"
  tags                = var.tags

  dynamic "email_receiver" {
    for_each = var.alert_emails
    content {
      name                    = "email-${email_receiver.key}"
      email_address           = email_receiver.value
      use_common_alert_schema = true
    }
  }
}

locals {
  alerts = {
    poison = {
      description = "A message failed every delivery and is in the poison queue."
      query       = "traces | where message contains 'poison queue not empty' or message contains 'moving to the poison queue'"
      operator    = "GreaterThan"
      threshold   = 0
      window      = "PT15M"
      severity    = 1
    }
    failures = {
      description = "Function invocations failed (a retried operation, or a broken deployment)."
      query       = "requests | where success == false"
      operator    = "GreaterThan"
      threshold   = 0
      window      = "PT15M"
      severity    = 2
    }
    sweep_silence = {
      description = "No sweep completed: the timer is not firing, or every sweep fails."
      query       = "traces | where message contains 'sweep completed'"
      operator    = "LessThan"
      threshold   = 1
      window      = var.sweep_silence_minutes == 60 ? "PT1H" : "PT${var.sweep_silence_minutes}M"
      severity    = 1
    }
  }
}

resource "azurerm_monitor_scheduled_query_rules_alert_v2" "app" {
  for_each             = local.alerts
  name                 = "${var.name}-jitc-${each.key}"
  resource_group_name  = var.resource_group_name
  location             = var.location
  description          = each.value.description
  scopes               = [azurerm_application_insights.app.id]
  severity             = each.value.severity
  evaluation_frequency = "PT5M"
  window_duration      = each.value.window
  tags                 = var.tags

  criteria {
    query                   = each.value.query
    time_aggregation_method = "Count"
    operator                = each.value.operator
    threshold               = each.value.threshold
    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.app.id]
  }
}
