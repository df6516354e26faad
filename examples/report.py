# The kind of code a chat assistant writes: turn the attached CSV into an Excel report.
import pandas as pd

sales = pd.read_csv("/mnt/data/sales.csv")
sales["revenue"] = sales["units"] * sales["price"]
summary = sales.groupby("region", as_index=False)[["units", "revenue"]].sum()

with pd.ExcelWriter("/mnt/data/sales_report.xlsx") as writer:
    sales.to_excel(writer, sheet_name="sales", index=False)
    summary.to_excel(writer, sheet_name="by region", index=False)

print(summary.to_string(index=False))
print("Saved the report to /mnt/data/sales_report.xlsx")
