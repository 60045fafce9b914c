mod chart;
mod dockerfile;
